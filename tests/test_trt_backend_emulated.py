"""runtime/tensorrt_backend.py, unmodified, on the emulated CUDA runtime and engine of tests/fake_gpu.py.

The arithmetic is ONNX Runtime's, so what these tests check is the backend's own logic: buffer
addresses, stream order, state ping-pong, CUDA-graph capture and its fallback, checked returns and the
first CUDA error's wording. benchmarks/gpu_check.sh runs the real thing on a GPU.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import SHIPPED_BUNDLE
from fake_gpu import CAPTURE_INVALIDATED, INSUFFICIENT_DRIVER, install

from policyrt.bundle import open_bundle
from policyrt.runtime.trt_engines import engine_filename
from policyrt.runtime.verify import TENSORRT_FP32_TOLERANCE, parity_inputs, parity_report

pytest.importorskip("onnxruntime")
GPU, TRT = "Orin", "10.3.0.30"


@pytest.fixture
def gpu(monkeypatch):
    return install(monkeypatch, GPU, TRT)


@pytest.fixture
def bundle(tmp_path):
    path = shutil.copytree(SHIPPED_BUNDLE, tmp_path / "b.policy")
    (path / "engines").mkdir()
    (path / "engines" / engine_filename(GPU, TRT, "fp32")).write_bytes((path / "policy.onnx").read_bytes())
    return open_bundle(path)


def make(bundle, batch=2, **options):
    from policyrt.runtime.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(bundle, batch, require_verified=False, **options)


@pytest.mark.parametrize("cuda_graphs", [True, False])
def test_the_emulated_engine_reproduces_parity_json(gpu, bundle, cuda_graphs):
    backend = make(bundle, cuda_graphs=cuda_graphs)
    parity = bundle.parity()
    report = parity_report(backend, parity, parity_inputs(parity), TENSORRT_FP32_TOLERANCE)
    assert report.ok, report.table()
    assert backend.graphs.captured is cuda_graphs
    backend.close()


def test_initial_state_survives_the_zeroing(gpu, bundle):
    """The arena is zeroed, then init rows are copied in on the backend's stream: the zeroing must be on that
    stream too (a non-blocking stream does not wait for the legacy stream 0), or it may land after them."""
    backend = make(bundle)
    rtg = next(s for s in bundle.manifest.state if s.name == "rtg").init
    assert rtg != 0.0
    np.testing.assert_array_equal(backend.state()["rtg"], np.full((2, 1), rtg, np.float32).reshape(backend.state()["rtg"].shape))
    backend.close()


def test_a_refused_input_shape_raises_naming_the_tensor(gpu, bundle):
    gpu[1].refuse = {"state.block0.C"}
    with pytest.raises(RuntimeError, match=r"set_input_shape\('state.block0.C'"):
        make(bundle)


def test_a_refused_tensor_address_raises_naming_the_tensor(gpu, bundle):
    gpu[1].refuse = {"action"}  # an output: only its address is set
    backend = make(bundle)
    with pytest.raises(RuntimeError, match=r"set_tensor_address\('action'\)"):
        backend.run()
    backend.close()


@pytest.mark.parametrize("invalidate", [False, True])
def test_a_failed_enqueue_in_capture_frees_the_graph_and_keeps_its_reason(gpu, bundle, invalidate):
    cudart, trt = gpu
    trt.fail_execute, trt.invalidate = "capture", invalidate
    backend = make(bundle)
    parity = bundle.parity()
    report = parity_report(backend, parity, parity_inputs(parity), TENSORRT_FP32_TOLERANCE)
    assert report.ok, report.table()  # both directions fell back to eager and still compute the policy
    assert not backend.graphs.captured
    assert "execute_async_v3 failed" in backend.graphs.fallback_reason
    assert str(CAPTURE_INVALIDATED) not in backend.graphs.fallback_reason
    assert not cudart.capturing and not cudart.graphs and not cudart.execs  # capture ended, nothing leaked
    backend.close()


def test_the_first_cuda_error_names_cuda_python_and_the_boards_cuda(monkeypatch, bundle):
    from policyrt.runtime.tensorrt_backend import CudaError

    cudart, _ = install(monkeypatch, GPU, TRT, cuda_python="13.0.1", runtime_version=13000, driver_version=12060)
    cudart.fail["cudaSetDevice"] = INSUFFICIENT_DRIVER
    with pytest.raises(CudaError) as raised:
        make(bundle)
    message = str(raised.value)
    assert "cudaErrorInsufficientDriver" in message
    assert "cuda-python 13.0.1 is built for CUDA 13.0, this board has 12.6" in message
    assert "pip install 'cuda-python>=12,<13'" in message
