"""`policyrt lint`: check a step graph against what a TensorRT generation's ONNX parser supports.

Every node's operator, the data type it computes in, the inputs that must be build-time constants and
the attributes with documented limits are checked against export/trt_ops.py (the parser's own support
matrix and changelog, per generation), plus what this runtime needs from an engine: contract-friendly
I/O dtypes, a batch dimension that an optimization profile can vary and nothing else dynamic, no
data-dependent shapes (a CUDA graph cannot capture them), and fp16-safe forms. Each finding carries its
reason; errors mean the parser or the runtime would refuse the graph, warnings mean it may work but
deserves a look. Needs only `onnx` (no TensorRT), so it runs in CI and on the workstation before a
bundle ever reaches a board.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from policyrt import contract

from .trt_ops import (
    CHECKED_RESTRICTIONS,
    CONSTANT_AFTER_LIFT,
    CONSTANT_INPUTS,
    CONTROL_FLOW,
    DATA_DEPENDENT_SHAPE,
    EXTRA_TYPES,
    RESTRICTIONS_10_1,
    TARGETS,
    Target,
    added_in,
    op_types,
)

# ONNX TensorProto element types -> the names the parser's matrix uses.
ONNX_TYPES = {1: "FP32", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 11: "DOUBLE",
              16: "BF16", 17: "FP8", 18: "FP8", 19: "FP8", 20: "FP8", 22: "INT4", 23: "FP4"}
# I/O dtypes a host buffer of this runtime can hold (runtime/trt_buffers.py TRT_DTYPES), INT64 excepted:
# the contract forbids it (below).
IO_TYPES = {"FP32", "FP16", "INT32", "BOOL", "INT8", "UINT8"}
DATA_INPUT = {"Where": 1}  # which input carries the data type the matrix talks about (default: input 0)
FP16_MAX = 65504.0
SEVERITIES = ("error", "warning")


@dataclass(frozen=True)
class Finding:
    severity: str  # error | warning
    rule: str
    where: str  # node (`name (Op)`) or tensor
    message: str  # the reason


@dataclass
class LintReport:
    target: Target
    precision: str
    graph: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def rules(self, severity: str | None = None) -> set[str]:
        return {f.rule for f in self.findings if severity in (None, f.severity)}

    def to_dict(self) -> dict:
        return {"target": self.target.name, "precision": self.precision, "graph": self.graph, "ok": self.ok,
                "findings": [f.__dict__ for f in self.findings]}

    def table(self) -> str:
        head = f"lint {self.graph} for {self.target.label}, {self.precision}: "
        head += f"{len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        lines = [head]
        for f in sorted(self.findings, key=lambda f: SEVERITIES.index(f.severity)):
            lines.append(f"  {f.severity.upper():<7} {f.rule:<22} {f.where}: {f.message}")
        lines.append("PASS" if self.ok else "FAIL: the TensorRT parser or this runtime would refuse this graph")
        return "\n".join(lines)


def version_text(version: tuple[int, int]) -> str:
    return ".".join(map(str, version))


class _Graph:
    """What the rules need to know about a graph: dtypes, shapes, producers, consumers, constants."""

    def __init__(self, model):
        import onnx

        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - lint what we can: rules needing types just skip unknown ones
            pass
        g = model.graph
        self.model, self.graph = model, g
        self.types: dict[str, int] = {}
        self.shapes: dict[str, list] = {}
        for vi in [*g.input, *g.output, *g.value_info]:
            t = vi.type.tensor_type
            self.types[vi.name] = t.elem_type
            if t.HasField("shape"):
                self.shapes[vi.name] = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
                                        for d in t.shape.dim]
        self.values: dict[str, np.ndarray] = {}
        for init in g.initializer:
            self.types[init.name] = init.data_type
            self.values[init.name] = onnx.numpy_helper.to_array(init)
        self.producer, self.consumers = {}, {}
        for node in g.node:
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                self.consumers.setdefault(inp, []).append(node)
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        self.types[node.output[0]] = attr.t.data_type
                        self.values[node.output[0]] = onnx.numpy_helper.to_array(attr.t)
        self.graph_inputs = {i.name for i in g.input} - set(self.values)
        self.graph_outputs = {o.name for o in g.output}
        self.foldable = self._foldable()

    def _foldable(self) -> set[str]:
        """Tensors computable at build time: everything whose inputs all are (nodes come topologically sorted)."""
        known = set(self.values)
        for node in self.graph.node:
            if node.op_type.startswith("Random"):
                continue
            if all(not i or i in known for i in node.input):
                known.update(o for o in node.output if o)
        return known

    def dtype(self, name: str) -> str | None:
        code = self.types.get(name)
        return ONNX_TYPES.get(code, f"onnx type {code}") if code else None


def where(node, index: int) -> str:
    return f"{node.name or f'node {index}'} ({node.op_type})"


def lint_model(model, target: str = "trt10.3", precision: str = "fp32", graph_name: str = "policy.onnx") -> LintReport:
    """Lint an onnx.ModelProto for `target` (trt10.3 | trt10 | trt11) built at `precision` (fp32 | fp16)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose from {', '.join(TARGETS)}")
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
    t = TARGETS[target]
    report = LintReport(t, precision, graph_name)
    g = _Graph(model)
    add = report.findings.append
    _check_opset(g, t, add)
    _check_io(g, add)
    for index, node in enumerate(g.graph.node):
        _check_node(g, t, node, where(node, index), add)
    _check_unencoded_restrictions(g, add)
    _check_fp16_forms(g, precision, add)
    untyped = sum(1 for n in g.graph.node if n.input and n.input[0] and g.dtype(n.input[0]) is None)
    if untyped:
        add(Finding("warning", "untyped", "model", f"shape inference left {untyped} node input(s) without a type: "
                    "their data types were not checked"))
    return report


def _check_opset(g: _Graph, t: Target, add) -> None:
    opset = next((o.version for o in g.model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        return
    if opset < 9 or opset > t.max_opset_latest:
        add(Finding("error", "opset", "model", f"opset {opset}: {t.label} parses opsets 9 to {t.max_opset_latest}"))
    elif opset > t.max_opset:
        add(Finding("warning", "opset", "model", f"opset {opset}: documented for the newest {t.name} releases only "
                    f"(the oldest are documented up to {t.max_opset}); export with opset <= {t.max_opset} to be safe"))


def _check_io(g: _Graph, add) -> None:
    batch_symbols = {}
    for vi, kind in [*((i, "input") for i in g.graph.input if i.name in g.graph_inputs),
                     *((o, "output") for o in g.graph.output)]:
        name, dtype, shape = vi.name, g.dtype(vi.name), g.shapes.get(vi.name)
        if dtype == "INT64":
            add(Finding("error", "io-int64", name, f"{kind} is int64: the step-graph contract allows int32 only "
                        "(TensorRT 8.6/10.3 restrict int64 I/O, and since 9.0 an int64 tensor needs int64 bindings)"))
        elif dtype is not None and dtype not in IO_TYPES:
            add(Finding("error", "io-dtype", name, f"{kind} is {dtype}: no TensorRT binding the host can fill "
                        f"(I/O must be one of {', '.join(sorted(IO_TYPES))})"))
        if contract.is_state(name) and dtype == "FP16":
            add(Finding("warning", "state-fp16", name, "state tensor stored in fp16: keep recurrent state fp32 "
                        "(the exp/max stabilizer and the accumulated C, n are sensitive)"))
        if shape is None:
            continue
        if not shape:
            add(Finding("error", "dynamic-shape", name, f"{kind} has no batch dimension (rank 0)"))
            continue
        if isinstance(shape[0], str):
            batch_symbols[name] = shape[0]
        elif shape[0] is not None:
            add(Finding("warning", "fixed-batch", name, f"{kind} has a fixed batch of {shape[0]}: the engine "
                        "will serve exactly that many slots (export with a dynamic batch dimension)"))
        rest = [d for d in shape[1:] if not isinstance(d, int)]
        if rest:
            add(Finding("error", "dynamic-shape", name, f"{kind} shape {shape}: only the batch dimension may be "
                        "dynamic (the optimization profile varies the batch; buffers are planned from the manifest)"))
    if len(set(batch_symbols.values())) > 1:
        add(Finding("warning", "batch-symbols", "model", "inputs and outputs name their batch dimension "
                    f"differently ({', '.join(sorted(set(batch_symbols.values())))}): TensorRT cannot tell they "
                    "are one dimension until it checks shapes at run time"))


def _check_node(g: _Graph, t: Target, node, at: str, add) -> None:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        add(Finding("error", "custom-op", at, f"operator from domain {node.domain!r}: the parser imports it only "
                    "as a TensorRT plugin registered under that name"))
        return
    types = op_types(op, t.version)
    if types is None:
        since = added_in(op)
        reason = (f"added to the parser in TensorRT {version_text(since)}; {t.label} predates it" if since
                  else "not supported by the TensorRT ONNX parser (onnx-tensorrt operators.md)")
        add(Finding("error", "unsupported-op", at, reason))
        return
    _check_types(g, t, node, at, types, add)
    _check_constant_inputs(g, t, node, at, add)
    _check_attributes(g, t, node, at, add)
    if op in DATA_DEPENDENT_SHAPE:
        add(Finding("error", "data-dependent-shape", at, "output shape depends on the data: TensorRT needs an "
                    "output allocator, buffers cannot be planned once, and a CUDA graph cannot capture it"))
    if op in CONTROL_FLOW:
        add(Finding("warning", "control-flow", at, "data-dependent control flow in a step graph: latency varies "
                    "and CUDA graph capture may fail (the export's graph checks forbid it)"))


def _check_unencoded_restrictions(g: _Graph, add) -> None:
    """One warning per operator type whose documented restriction the rules above do not encode."""
    counts: dict[str, int] = {}
    for node in g.graph.node:
        if node.op_type in RESTRICTIONS_10_1 and node.op_type not in CHECKED_RESTRICTIONS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    for op, n in counts.items():
        add(Finding("warning", "restriction", f"{op} ({n} node(s))",
                    f"documented restriction not checked by lint: {RESTRICTIONS_10_1[op]}"))


def _check_types(g: _Graph, t: Target, node, at: str, types: frozenset, add) -> None:
    op = node.op_type
    checked = []
    if op == "Constant":
        checked = [g.dtype(node.output[0])]
    elif op == "ConstantOfShape":
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        checked = [ONNX_TYPES.get(value.data_type) if value is not None else "FP32"]
    elif node.input:
        index = DATA_INPUT.get(op, 0)
        if index < len(node.input) and node.input[index]:
            checked = [g.dtype(node.input[index])]
        if op in ("Cast", "CastLike"):
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            checked.append(ONNX_TYPES.get(to) if to is not None else None)
    for dtype in checked:
        if dtype is None or dtype in types:
            continue
        if dtype == "DOUBLE":
            add(Finding("warning", "dtype", at, "computes in DOUBLE: the parser casts it down to FP32, clamping to "
                        "+-FLT_MAX"))
        else:
            source = f" ({EXTRA_TYPES[op][2]})" if op in EXTRA_TYPES else ""
            add(Finding("error", "dtype", at, f"{op} on {dtype}: the parser supports {', '.join(sorted(types))} "
                        f"for {op} in {t.label}{source}"))


def _check_constant_inputs(g: _Graph, t: Target, node, at: str, add) -> None:
    for index, name, level, lifted in CONSTANT_INPUTS.get(node.op_type, []):
        if index >= len(node.input) or not node.input[index]:
            continue
        tensor = node.input[index]
        if tensor in g.values:
            continue
        foldable = tensor in g.foldable
        if lifted is None or t.version < lifted:
            if level == "constant" and foldable:
                continue
            need = "an initializer" if level == "initializer" else "a build-time constant"
            later = f" (accepted as a tensor from TensorRT {version_text(lifted)} on)" if lifted else ""
            add(Finding("error", "constant-input", at, f"`{name}` is computed at run time; {t.label} needs "
                        f"{need}{later}"))
        elif node.op_type in CONSTANT_AFTER_LIFT and not foldable:
            add(Finding("error", "constant-input", at, f"`{name}` depends on run-time data; {t.label} still needs "
                        "it to resolve to a constant when the engine is built"))
        elif t.version == lifted:
            add(Finding("warning", "constant-input", at, f"`{name}` is computed at run time: accepted from TensorRT "
                        f"{version_text(lifted)} GA on, refused by any earlier parser; a constant is the safe form"))


def _attr(node, name, default=None):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _check_attributes(g: _Graph, t: Target, node, at: str, add) -> None:
    op = node.op_type
    if op == "Constant":
        bad = [a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings")]
        if bad:
            add(Finding("error", "constant-attr", at, f"{bad[0]}: the parser imports dense numeric constants only"))
    elif op == "LayerNormalization":
        extra = [o for o in node.output[1:] if o and (o in g.consumers or o in g.graph_outputs)]
        if extra:
            add(Finding("error", "layernorm-outputs", at, f"uses the Mean/InvStdDev output(s) {extra}: the parser "
                        "supports only the first output Y"))
    elif op == "ScatterND":
        reduction = _attr(node, "reduction", b"none")
        reduction = reduction.decode() if isinstance(reduction, bytes) else reduction
        if reduction != "none":
            add(Finding("error", "scatternd-reduction", at, f"reduction={reduction!r}: the parser supports "
                        "ScatterND without reduction only (a window shift is Slice + Concat anyway)"))
    elif op == "TopK":
        if _attr(node, "sorted", 1) != 1:
            add(Finding("error", "topk", at, "sorted=0: the parser requires sorted=1"))
        k = g.values.get(node.input[1]) if len(node.input) > 1 else None
        if k is not None and int(np.max(k)) >= 3840:
            add(Finding("error", "topk", at, f"K={int(np.max(k))}: the parser requires K < 3840"))
    elif op == "Einsum" and t.version < (10, 12):
        for problem in _einsum_problems(g, node):
            add(Finding("error", "einsum", at, f"{problem}: supported from TensorRT 10.12 on (onnx-tensorrt "
                        f"Changelog 10.12), not in {t.label}"))


def _einsum_problems(g: _Graph, node) -> list[str]:
    equation = _attr(node, "equation", b"")
    equation = (equation.decode() if isinstance(equation, bytes) else equation).replace(" ", "")
    operands = equation.split("->")[0].split(",")
    problems = []
    if "..." in equation:
        problems.append(f"ellipsis in {equation!r}")
    for term in operands:
        repeated = sorted({c for c in term if term.count(c) > 1 and c != "."})
        if repeated:
            problems.append(f"diagonal (label {''.join(repeated)} repeated in {term!r})")
    sizes: dict[str, set] = {}
    for term, tensor in zip(operands, node.input):
        shape = g.shapes.get(tensor) or (list(g.values[tensor].shape) if tensor in g.values else None)
        if shape is None or "..." in term or len(shape) != len(term):
            continue
        for label, dim in zip(term, shape):
            if isinstance(dim, int):
                sizes.setdefault(label, set()).add(dim)
    broadcast = sorted(label for label, dims in sizes.items() if len(dims) > 1 and 1 in dims)
    if broadcast:
        problems.append(f"broadcasting over label(s) {''.join(broadcast)} in {equation!r}")
    return problems


def _check_fp16_forms(g: _Graph, precision: str, add) -> None:
    severity = "error" if precision == "fp16" else "warning"
    for index, node in enumerate(g.graph.node):
        if node.op_type == "Log" and node.input and getattr(g.producer.get(node.input[0]), "op_type", "") == "Sigmoid":
            add(Finding(severity, "sigmoid-log", where(node, index), "log(sigmoid(x)) underflows to -inf in fp16 "
                        "once sigmoid(x) < 6e-8 (x < ~-16.6): write log-sigmoid as -softplus(-x)"))
    if precision != "fp16":
        return
    for name, value in g.values.items():
        if value.dtype.kind == "f" and value.size and np.max(np.abs(value.astype(np.float64))) > FP16_MAX:
            worst = float(value.flat[int(np.argmax(np.abs(value)))])
            add(Finding("warning", "fp16-range", name, f"constant holds {worst:g}, beyond fp16's +-65504: it becomes "
                        "inf if this tensor is computed in fp16 (a -inf attention mask turns padded rows into NaN; "
                        "use -1e4)"))


def lint_bundle(bundle, target: str = "trt10.3", precision: str = "fp32") -> list[LintReport]:
    """Lint the bundle's graph; for fp16 on a strongly typed target also the fp16 graph build-engine feeds
    the parser (export/fp16.py), since that is what TensorRT will see."""
    import onnx

    model = onnx.load(str(bundle.onnx_path))
    name = f"{bundle.path.name}/policy.onnx"
    reports = [lint_model(model, target, precision, name)]
    if precision == "fp16" and TARGETS[target].strongly_typed:
        from .fp16 import convert_to_fp16

        state_names = [s.name for s in bundle.manifest.state]
        reports.append(lint_model(convert_to_fp16(model, state_names), target, precision, f"{name} (fp16 pass)"))
    return reports
