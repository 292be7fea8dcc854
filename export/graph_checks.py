"""Checks on an exported step graph: the I/O contract and DESIGN.md's lean-graph rules."""

from __future__ import annotations

from dataclasses import dataclass, field

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
FLOAT, BOOL, INT32, INT64 = 1, 9, 6, 7
DTYPE_NAMES = {FLOAT: "float32", BOOL: "bool", INT32: "int32", INT64: "int64", 10: "float16"}


@dataclass
class GraphReport:
    node_count: int
    op_histogram: dict[str, int]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_step_graph(model, state_names: list[str]) -> GraphReport:
    """`model` is an onnx.ModelProto; `state_names` the manifest's state tensor names."""
    graph = model.graph
    hist: dict[str, int] = {}
    for node in graph.node:
        hist[node.op_type] = hist.get(node.op_type, 0) + 1
    report = GraphReport(node_count=len(graph.node), op_histogram=dict(sorted(hist.items())))
    for op, why in FORBIDDEN_OPS.items():
        if op in hist:
            report.problems.append(f"{hist[op]} {op} node(s): {why}")
    inputs = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    outputs = {o.name: o.type.tensor_type.elem_type for o in graph.output}
    expected_in = {"obs": FLOAT, "prev_action": FLOAT, "reward": FLOAT, "target_return": FLOAT, "reset": BOOL}
    expected_in.update({f"state.{n}": None for n in state_names})
    expected_out = {"action": FLOAT, **{f"state.{n}.next": None for n in state_names}}
    for table, expected, what in ((inputs, expected_in, "input"), (outputs, expected_out, "output")):
        for name in sorted(set(expected) - set(table)):
            report.problems.append(f"missing {what} {name!r}")
        for name in sorted(set(table) - set(expected)):
            report.problems.append(f"unexpected {what} {name!r}")
        for name, dtype in table.items():
            want = expected.get(name)
            if want is not None and dtype != want:
                report.problems.append(f"{what} {name!r} is {DTYPE_NAMES.get(dtype, dtype)}, contract says {DTYPE_NAMES[want]}")
            if dtype == INT64:
                report.problems.append(f"{what} {name!r} is int64 (TensorRT 8.6/10.3 restrict int64 I/O; use int32)")
    for name in state_names:
        a, b = inputs.get(f"state.{name}"), outputs.get(f"state.{name}.next")
        if a is not None and b is not None and a != b:
            report.problems.append(f"state {name!r}: input dtype {DTYPE_NAMES.get(a)} != output dtype {DTYPE_NAMES.get(b)}")
    return report
