"""Trace a step module into the ONNX step graph of the contract (policyrt/contract.py)."""

from __future__ import annotations

import io
from pathlib import Path

from policyrt import contract

OPSET = 17  # LayerNormalization is a single op from 17 on; TensorRT 10.x parses 17.


def example_inputs(step, obs_dim: int, act_dim: int, batch: int = 2):
    """Fresh host inputs (every slot resetting) and initial states, in the step module's argument order."""
    import torch

    inputs = contract.host_input_buffers(obs_dim, act_dim, batch, target_return=0.0)
    return (*(torch.from_numpy(inputs[name]) for name in contract.INPUTS), *step.initial_states(batch))


def export_step_graph(step, obs_dim: int, act_dim: int, out: Path | None = None) -> bytes:
    """Returns the serialized ONNX model (and writes it to `out` if given). Batch is dynamic."""
    import torch

    names_in, names_out = contract.input_names(step.specs), contract.output_names(step.specs)
    dynamic = {n: {0: "batch"} for n in (*names_in, *names_out)}
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            step.eval(),
            example_inputs(step, obs_dim, act_dim),
            buffer,
            input_names=names_in,
            output_names=names_out,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,  # the TorchScript exporter keeps the graph flat and its names stable
        )
    data = buffer.getvalue()
    if out is not None:
        Path(out).write_bytes(data)
    return data


def state_table(step) -> list[dict]:
    """The manifest's `state`: one row per state tensor of the step module."""
    return [s.to_dict() for s in step.specs]
