"""Trace a step module into the ONNX step graph of the contract (DESIGN.md, "The step-graph contract")."""

from __future__ import annotations

import io
from pathlib import Path

OPSET = 17  # LayerNormalization is a single op from 17 on; TensorRT 10.x parses 17.
CONTRACT_INPUTS = ("obs", "prev_action", "reward", "target_return", "reset")


def example_inputs(step, obs_dim: int, act_dim: int, batch: int = 2):
    import torch

    return (
        torch.zeros(batch, obs_dim),
        torch.zeros(batch, act_dim),
        torch.zeros(batch),
        torch.zeros(batch),
        torch.ones(batch, dtype=torch.bool),
        *step.initial_states(batch),
    )


def export_step_graph(step, obs_dim: int, act_dim: int, out: Path | None = None) -> bytes:
    """Returns the serialized ONNX model (and writes it to `out` if given). Batch is dynamic."""
    import torch

    state_in = [f"state.{s.name}" for s in step.specs]
    state_out = [f"{n}.next" for n in state_in]
    names_in = [*CONTRACT_INPUTS, *state_in]
    names_out = ["action", *state_out]
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
    return [
        {"name": s.name, "shape": list(s.shape), "dtype": s.dtype, "init": s.init} for s in step.specs
    ]
