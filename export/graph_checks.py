"""Checks on an exported step graph: the I/O contract of policyrt/contract.py and the lean-graph rules below."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from policyrt import contract
from policyrt.contract import StateTensor

# Control flow makes latency data dependent and TensorRT/CUDA graphs unhappy; ScatterND/Elements
# are how naive exports shift windows (Slice + Concat is the lean form); NonZero has dynamic shapes.
FORBIDDEN_OPS = {
    "If": "data-dependent branch",
    "Loop": "data-dependent loop",
    "Scan": "recurrence inside the step graph",
    "ScatterND": "window shift by scatter (use Slice + Concat)",
    "ScatterElements": "window shift by scatter (use Slice + Concat)",
    "NonZero": "data-dependent shape",
}
# ONNX TensorProto element types of the dtypes a step graph's I/O may use (and int64, which it may not).
ONNX_DTYPES = {1: np.dtype(np.float32), 9: np.dtype(np.bool_), 6: np.dtype(np.int32), 7: np.dtype(np.int64),
               10: np.dtype(np.float16)}


@dataclass
class GraphReport:
    node_count: int
    op_histogram: dict[str, int]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _dtype_name(elem_type: int) -> str:
    dtype = ONNX_DTYPES.get(elem_type)
    return dtype.name if dtype is not None else str(elem_type)


def check_step_graph(model, states: list[StateTensor]) -> GraphReport:
    """`model` is an onnx.ModelProto; `states` the state table (a step module's specs, a manifest's state)."""
    graph = model.graph
    hist: dict[str, int] = {}
    for node in graph.node:
        hist[node.op_type] = hist.get(node.op_type, 0) + 1
    report = GraphReport(node_count=len(graph.node), op_histogram=dict(sorted(hist.items())))
    for op, why in FORBIDDEN_OPS.items():
        if op in hist:
            report.problems.append(f"{hist[op]} {op} node(s): {why}")
    found = {"input": {i.name: i.type.tensor_type.elem_type for i in graph.input},
             "output": {o.name: o.type.tensor_type.elem_type for o in graph.output}}
    expected = {"input": {}, "output": {}}
    for spec in contract.step_io(states).values():
        expected["input" if spec.is_input else "output"][spec.name] = spec.dtype
    for what, table in found.items():
        for name in sorted(set(expected[what]) - set(table)):
            report.problems.append(f"missing {what} {name!r}")
        for name in sorted(set(table) - set(expected[what])):
            report.problems.append(f"unexpected {what} {name!r}")
        for name, elem_type in table.items():
            want = expected[what].get(name)
            if want is not None and ONNX_DTYPES.get(elem_type) != want:
                report.problems.append(f"{what} {name!r} is {_dtype_name(elem_type)}, contract says {want.name}")
            if ONNX_DTYPES.get(elem_type) == np.dtype(np.int64):
                report.problems.append(f"{what} {name!r} is int64 (TensorRT 8.6/10.3 restrict int64 I/O; use int32)")
    return report
