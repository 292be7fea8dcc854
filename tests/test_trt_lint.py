"""`policyrt lint`: shipped bundles pass for every TensorRT generation; each rule fires on a hand-made graph
that breaks it and stays quiet on the graph that does not."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from conftest import ROOT  # noqa: E402
from onnx import TensorProto as TP  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

from policyrt.bundle import open_bundle  # noqa: E402
from policyrt.export.trt_lint import lint_bundle, lint_model  # noqa: E402
from policyrt.export.trt_ops import TARGETS, op_types  # noqa: E402

ALL = list(TARGETS)
SHIPPED = sorted((ROOT / "bundles").glob("*.policy"))


def test_there_are_shipped_bundles_to_lint():
    assert len(SHIPPED) >= 2


@pytest.mark.parametrize("bundle", SHIPPED, ids=lambda p: p.name)
@pytest.mark.parametrize("target", ALL)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_shipped_bundles_lint_clean(bundle, target, precision):
    """CI gate: every shipped bundle builds on every generation (fp16 on 10.12+/11 lints the fp16 pass too)."""
    reports = lint_bundle(open_bundle(bundle), target, precision)
    assert len(reports) == (2 if precision == "fp16" and target != "trt10.3" else 1)
    for report in reports:
        assert report.ok, report.table()
        assert not report.warnings, report.table()


def model(nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def vi(name, dtype=TP.FLOAT, shape=("batch", 4)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def const(name, values, dtype=None):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def unary(op, dtype=TP.FLOAT, **attrs):
    return model([helper.make_node(op, ["x"], ["y"], **attrs)], [vi("x", dtype)], [vi("y", dtype)])


def findings(m, target="trt10.3", precision="fp32", severity=None):
    return lint_model(m, target, precision).rules(severity)


@pytest.mark.parametrize("target", ALL)
def test_an_operator_the_parser_lacks_is_an_error(target):
    assert "unsupported-op" in findings(unary("Det"), target, severity="error")
    assert "unsupported-op" not in findings(unary("Relu"), target)


def test_an_operator_added_later_is_an_error_only_before_its_version():
    stft = model([helper.make_node("STFT", ["x", "step"], ["y"])], [vi("x", shape=("batch", 64, 1))],
                 [vi("y", shape=("batch", 8, 33, 2))], [const("step", 8, np.int64)])
    report = lint_model(stft, "trt10.3")
    assert "unsupported-op" in report.rules("error")
    assert "TensorRT 10.5" in next(f.message for f in report.findings if f.rule == "unsupported-op")
    assert "unsupported-op" not in findings(stft, "trt10")
    assert op_types("Attention", (10, 12)) is None and op_types("Attention", (10, 14)) is not None
    assert op_types("Swish", (10, 15)) is None and op_types("Swish", (11, 0)) is not None


def test_a_type_outside_the_matrix_is_an_error():
    mm = model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", TP.INT32)], [vi("y", TP.INT32)],
               [const("w", np.ones((4, 4)), np.int32)])
    report = lint_model(mm)
    assert "dtype" in report.rules("error")
    assert "MatMul on INT32" in report.table()
    assert "dtype" not in findings(unary("Relu", TP.INT32))


def test_int32_clip_is_accepted_as_the_importer_source_says():
    assert "dtype" not in findings(unary("Clip", TP.INT32))
    assert "dtype" in findings(unary("Clip", TP.BOOL), severity="error")


def test_double_computation_is_a_warning():
    assert "dtype" in findings(unary("Relu", TP.DOUBLE), severity="warning")


def test_int64_io_is_an_error_and_bool_io_is_fine():
    assert "io-int64" in findings(unary("Neg", TP.INT64), severity="error")
    passthrough = model([helper.make_node("Not", ["x"], ["y"])], [vi("x", TP.BOOL, ("batch",))],
                        [vi("y", TP.BOOL, ("batch",))])
    assert lint_model(passthrough).findings == []


def test_io_without_a_host_buffer_type_is_an_error():
    assert "io-dtype" in findings(unary("Relu", TP.DOUBLE), severity="error")


def test_fp16_state_is_a_warning():
    m = model([helper.make_node("Identity", ["state.c"], ["state.c.next"])], [vi("state.c", TP.FLOAT16)],
              [vi("state.c.next", TP.FLOAT16)])
    assert "state-fp16" in findings(m, severity="warning")


def test_only_the_batch_dimension_may_be_dynamic():
    m = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", shape=("batch", "n"))], [vi("y", shape=("batch", "n"))])
    assert "dynamic-shape" in findings(m, severity="error")
    fixed = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", shape=(2, 4))], [vi("y", shape=(2, 4))])
    assert findings(fixed, severity="warning") == {"fixed-batch"}
    mixed = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", shape=("B", 4))], [vi("y", shape=("N", 4))])
    assert "batch-symbols" in findings(mixed, severity="warning")
    assert lint_model(unary("Relu")).findings == []


def test_slice_axes_computed_at_run_time_is_a_warning_on_10_3_only():
    nodes = [helper.make_node("Add", ["axes0", "one"], ["axes"]),
             helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])]
    inits = [const("axes0", [0], np.int64), const("one", [1], np.int64), const("starts", [0], np.int64),
             const("ends", [2], np.int64)]
    m = model(nodes, [vi("x")], [vi("y", shape=("batch", 2))], inits)
    assert "constant-input" in findings(m, "trt10.3", severity="warning")
    assert "constant-input" not in findings(m, "trt10")
    inits[0] = const("axes", [1], np.int64)
    direct = model(nodes[1:], [vi("x")], [vi("y", shape=("batch", 2))], [*inits, const("axes0", [0], np.int64)])
    assert "constant-input" not in findings(direct, "trt10.3")


def test_squeeze_axes_must_be_an_initializer_before_10_7_and_a_constant_after():
    folded = model([helper.make_node("Add", ["a", "zero"], ["axes"]), helper.make_node("Squeeze", ["x", "axes"], ["y"])],
                   [vi("x", shape=("batch", 1))], [vi("y", shape=("batch",))],
                   [const("a", [1], np.int64), const("zero", [0], np.int64)])
    assert "constant-input" in findings(folded, "trt10.3", severity="error")
    assert "constant-input" not in findings(folded, "trt10")
    runtime = model([helper.make_node("Squeeze", ["x", "axes"], ["y"])],
                    [vi("x", shape=("batch", 1)), vi("axes", TP.INT64, (1,))], [vi("y", shape=("batch",))])
    assert "constant-input" in findings(runtime, "trt11", severity="error")


@pytest.mark.parametrize("op, index", [("CumSum", 1), ("ReduceSum", 1)])
def test_axis_inputs_from_the_graph_are_errors(op, index):
    m = model([helper.make_node(op, ["x", "axis"], ["y"])], [vi("x"), vi("axis", TP.INT64, (1,))], [vi("y")])
    for target in ALL:
        assert "constant-input" in findings(m, target, severity="error"), target
    constant = model([helper.make_node(op, ["x", "axis"], ["y"])], [vi("x")], [vi("y")], [const("axis", [1], np.int64)])
    assert "constant-input" not in findings(constant)


def layer_norm(outputs):
    return model([helper.make_node("LayerNormalization", ["x", "s", "b"], outputs, axis=-1)], [vi("x")],
                 [vi(o) if o == "y" else vi(o, shape=("batch", 1)) for o in outputs if o],
                 [const("s", np.ones(4), np.float32), const("b", np.zeros(4), np.float32)])


def test_layer_norm_may_only_use_its_first_output():
    assert "layernorm-outputs" in findings(layer_norm(["y", "mean"]), severity="error")
    assert lint_model(layer_norm(["y"])).findings == []


@pytest.mark.parametrize("reduction, bad", [("add", True), ("none", False)])
def test_scatternd_reduction(reduction, bad):
    m = model([helper.make_node("ScatterND", ["x", "idx", "upd"], ["y"], reduction=reduction)],
              [vi("x", shape=(2, 4))], [vi("y", shape=(2, 4))],
              [const("idx", [[0]], np.int64), const("upd", np.ones((1, 4)), np.float32)], opset=18)
    assert ("scatternd-reduction" in findings(m, severity="error")) == bad


@pytest.mark.parametrize("equation, shapes", [
    ("ii->i", [("batch", "batch")]),
    ("...ij,jk->...ik", [("batch", 3, 4), (4, 5)]),
    ("ij,ij->ij", [(1, 4), (3, 4)]),
])
def test_einsum_forms_older_parsers_refuse(equation, shapes):
    inputs = [vi(f"x{i}", shape=s) for i, s in enumerate(shapes)]
    m = model([helper.make_node("Einsum", [i.name for i in inputs], ["y"], equation=equation)], inputs,
              [helper.make_tensor_value_info("y", TP.FLOAT, None)])
    assert "einsum" in findings(m, "trt10.3", severity="error")
    assert "einsum" not in findings(m, "trt10")
    plain = model([helper.make_node("Einsum", ["a", "b"], ["y"], equation="bij,jk->bik")],
                  [vi("a", shape=("batch", 3, 4)), vi("b", shape=(4, 5))], [vi("y", shape=("batch", 3, 5))])
    assert "einsum" not in findings(plain, "trt10.3")


def test_sigmoid_log_chain_is_a_warning_in_fp32_and_an_error_in_fp16():
    chain = model([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Log", ["s"], ["y"])], [vi("x")], [vi("y")])
    assert "sigmoid-log" in findings(chain, precision="fp32", severity="warning")
    assert "sigmoid-log" in findings(chain, precision="fp16", severity="error")
    softplus = model([helper.make_node("Neg", ["x"], ["n"]), helper.make_node("Softplus", ["n"], ["s"]),
                      helper.make_node("Neg", ["s"], ["y"])], [vi("x")], [vi("y")])
    assert lint_model(softplus, precision="fp16").findings == []


def test_constants_beyond_fp16_range_are_flagged_for_fp16_builds():
    m = model([helper.make_node("Add", ["x", "mask"], ["y"])], [vi("x")], [vi("y")],
              [const("mask", np.full(4, -1e9), np.float32)])
    assert "fp16-range" in findings(m, precision="fp16", severity="warning")
    assert "fp16-range" not in findings(m, precision="fp32")


@pytest.mark.parametrize("target, severity", [("trt10.3", "error"), ("trt10", "warning"), ("trt11", None)])
def test_opset_range_per_generation(target, severity):
    opset22 = model([helper.make_node("Relu", ["x"], ["y"])], [vi("x")], [vi("y")], opset=22)
    rules = findings(opset22, target, severity=severity)
    assert ("opset" in rules) == (severity is not None)


def test_custom_domain_needs_a_plugin():
    node = helper.make_node("MyOp", ["x"], ["y"], domain="com.example")
    m = helper.make_model(helper.make_graph([node], "g", [vi("x")], [vi("y")]),
                          opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    assert "custom-op" in findings(m, severity="error")


def test_data_dependent_shapes_are_errors():
    m = model([helper.make_node("NonZero", ["x"], ["y"])], [vi("x")], [helper.make_tensor_value_info("y", TP.INT64, None)])
    assert "data-dependent-shape" in findings(m, severity="error")


def test_control_flow_is_a_warning():
    branch = lambda v: helper.make_graph(  # noqa: E731
        [helper.make_node("Constant", [], [f"c{v}"], value=numpy_helper.from_array(np.full(4, v, np.float32)))],
        f"b{v}", [], [helper.make_tensor_value_info(f"c{v}", TP.FLOAT, [4])])
    m = model([helper.make_node("If", ["cond"], ["y"], then_branch=branch(1), else_branch=branch(0))],
              [helper.make_tensor_value_info("cond", TP.BOOL, [])], [helper.make_tensor_value_info("y", TP.FLOAT, [4])])
    assert "control-flow" in findings(m, severity="warning")


def test_topk_limits():
    def topk(k, sorted_):
        return model([helper.make_node("TopK", ["x", "k"], ["v", "i"], sorted=sorted_)], [vi("x", shape=("batch", 5000))],
                     [vi("v", shape=("batch", k)), vi("i", TP.INT64, ("batch", k))], [const("k", [k], np.int64)])
    assert "topk" in findings(topk(3, 0), severity="error")
    assert "topk" in findings(topk(4000, 1), severity="error")
    assert "topk" not in findings(topk(3, 1))


def test_string_constants_are_errors():
    m = model([helper.make_node("Constant", [], ["s"], value_string="hello"), helper.make_node("Relu", ["x"], ["y"])],
              [vi("x")], [vi("y")])
    assert "constant-attr" in findings(m, severity="error")


def test_unencoded_restrictions_are_reported_once_per_operator():
    resize = [helper.make_node("Resize", ["x", "", "scales"], [f"y{i}"], mode="nearest") for i in range(3)]
    m = model(resize, [vi("x", shape=("batch", 1, 4, 4))], [vi(f"y{i}", shape=("batch", 1, 8, 8)) for i in range(3)],
              [const("scales", [1, 1, 2, 2], np.float32)])
    report = lint_model(m)
    restriction = [f for f in report.findings if f.rule == "restriction"]
    assert len(restriction) == 1 and restriction[0].where == "Resize (3 node(s))"


def test_report_serializes_and_names_the_reason():
    report = lint_model(unary("Neg", TP.INT64))
    doc = report.to_dict()
    assert doc["ok"] is False and doc["target"] == "trt10.3"
    assert any("contract allows int32 only" in f["message"] for f in doc["findings"])
    assert report.table().endswith("FAIL: the TensorRT parser or this runtime would refuse this graph")
