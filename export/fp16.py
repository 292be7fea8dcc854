"""The fp16 graph for strongly typed TensorRT builds (10.12+ with STRONGLY_TYPED, and every 11.x build).

A strongly typed network computes in exactly the types the ONNX states; TensorRT 11 removed the FP16
builder flag (NVIDIA's 10.x -> 11.x migration guide: "use strongly typed networks ... convert your ONNX
model to mixed precision before building"). This pass is deliberately narrow: only the projections —
MatMul/Gemm with a weight initializer — run in fp16, with a Cast to fp16 on the activation and a Cast back
to fp32 on the result. Everything else stays fp32: the I/O (so the runtime's buffers and the contract do
not change), the recurrent state and every op that touches it, LayerNorm, attention scores between
activations, and the gate math. A projection whose result reaches Exp/Softplus/Max through
nothing but reshaping and sign flips (the xLSTM gate pre-activations) also stays fp32: exp() turns an fp16
rounding of 1e-3 into a relative error of the same size in a state that accumulates over the episode.
"""

from __future__ import annotations

import copy

# Ops that pass values through unchanged in magnitude: a projection seen through them is still "the gate".
_TRANSPARENT = {"Add", "Sub", "Split", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Neg", "Slice", "Concat",
                "Flatten", "Identity"}
_GATE_MATH = {"Exp", "Softplus", "Max"}  # the exponential gates and their stabilizer; sigmoid is bounded
FLOAT, FLOAT16 = 1, 10


def _weight_input(node, initializers: dict) -> int | None:
    """Index of the float32 weight initializer of a MatMul/Gemm, if exactly one of A/B is one."""
    found = [i for i in (0, 1) if i < len(node.input) and node.input[i] in initializers
             and initializers[node.input[i]].data_type == FLOAT]
    return found[0] if len(found) == 1 else None


def feeds_gate_math(model, node, depth: int = 4) -> bool:
    """Does `node`'s output reach gate math through at most `depth` transparent ops?"""
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    frontier, seen = list(node.output), set()
    for _ in range(depth + 1):
        nxt = []
        for tensor in frontier:
            for c in consumers.get(tensor, []):
                if c.op_type in _GATE_MATH:
                    return True
                if c.op_type in _TRANSPARENT and id(c) not in seen:
                    seen.add(id(c))
                    nxt.extend(c.output)
        frontier = nxt
    return False


def fp16_nodes(model) -> list[str]:
    """Names of the MatMul/Gemm nodes this pass runs in fp16 (also what a weakly typed build leaves fp16)."""
    initializers = {i.name: i for i in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm") and _weight_input(n, initializers) is not None
            and not feeds_gate_math(model, n)]


def convert_to_fp16(model, state_names=None):
    """A copy of `model` whose weight projections compute in fp16 (see module docstring); I/O unchanged.

    `state_names` is accepted for symmetry with the lint; state tensors are never converted because only
    initializer-weighted projections are, and the graph's I/O keeps its types by construction.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = copy.deepcopy(model)
    g = model.graph
    initializers = {i.name: i for i in g.initializer}
    chosen = set(fp16_nodes(model))
    converted: dict[str, str] = {}  # fp32 initializer -> its fp16 twin (shared weights converted once)
    nodes = []
    for index, node in enumerate(g.node):
        if node.name not in chosen:
            nodes.append(node)
            continue
        tag = node.name or f"{node.op_type}_{index}"
        w = _weight_input(node, initializers)
        inputs = list(node.input)
        for i, name in enumerate(inputs):
            if not name:
                continue
            if name in initializers and initializers[name].data_type == FLOAT and (i == w or i == 2):
                if name not in converted:
                    half = numpy_helper.from_array(numpy_helper.to_array(initializers[name]).astype("float16"),
                                                   f"{name}.fp16")
                    g.initializer.append(half)
                    converted[name] = half.name
                inputs[i] = converted[name]
            else:
                cast = f"{tag}/to_fp16_{i}"
                nodes.append(helper.make_node("Cast", [name], [cast], name=cast, to=FLOAT16))
                inputs[i] = cast
        out = node.output[0]
        node_fp16 = copy.deepcopy(node)
        del node_fp16.input[:]
        node_fp16.input.extend(inputs)
        node_fp16.output[0] = f"{tag}/out_fp16"
        nodes.append(node_fp16)
        nodes.append(helper.make_node("Cast", [node_fp16.output[0]], [out], name=f"{tag}/to_fp32", to=FLOAT))
    del g.node[:]
    g.node.extend(nodes)
    still_used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in still_used or i.name not in converted]
    del g.initializer[:]
    g.initializer.extend(keep)
    onnx.checker.check_model(model)
    return model
