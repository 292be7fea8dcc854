"""What the TensorRT ONNX parser supports, per TensorRT generation — the data behind `policyrt lint`.

Sources (onnx/onnx-tensorrt, the parser TensorRT ships):
- docs/operators.md at the 10.1 GA release (the closest published matrix to JetPack 6's 10.3): which
  operators are supported, for which data types, with which restrictions;
- docs/Changelog.md up to 10.15 GA: what changed after 10.1 (e.g. 10.3 "tensor `axes` inputs for Slice",
  10.7 "dynamic axes for Squeeze/Unsqueeze", 10.8 "dynamic axes ... CumSum", 10.12 "ellipses, diagonal,
  and broadcasting in Einsum", 10.14 Attention, 10.15 RMSNormalization/RotaryEmbedding/TensorScatter);
- docs/operators.md at 10.15 GA (opset 9..24, `reduction` other than none unsupported for ScatterND);
- NVIDIA/TensorRT release notes 11.0 (parser: Swish) and the 10.x -> 11.x migration guide (weak typing
  removed: fp16 must be in the ONNX);
- where the matrix lags the importer source, the source (onnxOpImporters.cpp), cited per entry.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    name: str
    label: str
    version: tuple[int, int]  # the oldest TensorRT this target stands for: rules are judged at this version
    max_opset: int  # highest opset documented for every version of the target
    max_opset_latest: int  # highest opset documented for the newest version of the target
    strongly_typed: bool  # fp16 must be in the ONNX (weak typing deprecated in 10.12, removed in 11.0)


TARGETS = {
    "trt10.3": Target("trt10.3", "TensorRT 10.3 (JetPack 6)", (10, 3), 20, 20, False),
    # 10.12's own matrix is not among the sources: 20 is documented for 10.0 and nothing was ever dropped,
    # 24 for 10.15. Opsets between the two are warnings, not errors.
    "trt10": Target("trt10", "TensorRT 10.12+ (strongly typed 10.x)", (10, 12), 20, 24, True),
    "trt11": Target("trt11", "TensorRT 11.x", (11, 0), 24, 24, True),
}

# Operators marked N in the 10.1 matrix (opset <= 20). Some became supported later: see ADDED.
UNSUPPORTED_10_1 = frozenset("""
    AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow Col2Im
    CenterCropPad Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear HammingWindow
    HannWindow ImageDecoder MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial
    NegativeLogLikelihoodLoss Optional OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul
    RegexFullMatch STFT SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert
    SequenceLength SequenceMap SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer
    StringSplit TfIdfVectorizer Unique
""".split())

# The 10.1 matrix's "Supported Types" column, grouped by identical type lists.
_TYPES_10_1 = {
    "FP32 FP16 BF16": """
        Acos Acosh Asin Asinh Atan Atanh AveragePool BatchNormalization Ceil Celu Clip Conv
        ConvTranspose Cos Cosh CumSum Dropout Einsum Elu Erf Exp Floor Gemm GlobalAveragePool
        GlobalLpPool GlobalMaxPool GroupNormalization GRU HardSigmoid HardSwish Hardmax
        ImageScaler InstanceNormalization IsInf LayerNormalization LeakyRelu Log LogSoftmax LRN
        LSTM LpNormalization LpPool MatMul MaxPool MeanVarianceNormalization ParametricSoftplus
        Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike
        Reciprocal Resize RNN Round ScaledTanh Scan Selu Sigmoid Sin Sinh Softmax Softplus
        Softsign Sqrt Tan Tanh ThresholdedRelu Upsample
    """,
    "FP32 FP16 BF16 INT32 INT64": """
        Abs Add ArgMax ArgMin DepthToSpace Div Equal Greater GreaterOrEqual IsNaN Less
        LessOrEqual Max Min Mod Mul Neg Pad Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
        ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Scatter
        ScatterElements ScatterND Shrink Sign SpaceToDepth Sub Sum TopK
    """,
    "FP32 FP16 BF16 INT32 INT64 BOOL": """
        Concat Constant ConstantOfShape Expand EyeLike Flatten Gather GatherElements GatherND
        Identity If Loop OneHot Reshape ReverseSequence Shape Size Slice Split Squeeze Tile
        Transpose Trilu Unsqueeze Where
    """,
    "FP32 FP16": """
        DeformConv GridSample Mish NonMaxSuppression NonZero RoiAlign
    """,
    "BOOL": """
        And Not Or Xor
    """,
    "FP32 FP16 BF16 INT32 INT64 UINT8 BOOL": """
        Cast CastLike
    """,
    "INT8 FP8 INT4": """
        DequantizeLinear
    """,
    "FP32 FP16 BF16 INT8 INT32 INT64": """
        Gelu
    """,
    "FP32 FP16 BF16 FP8 INT32 INT64": """
        Mean
    """,
}
TYPES_10_1 = {op: frozenset(types.split()) for types, ops in _TYPES_10_1.items() for op in ops.split()}

# Operators the parser gained after 10.1: op -> (first version, types).
ADDED = {
    "BlackmanWindow": ((10, 4), "FP32 FP16"),
    "HammingWindow": ((10, 4), "FP32 FP16"),
    "HannWindow": ((10, 4), "FP32 FP16"),
    "STFT": ((10, 5), "FP32"),
    "Attention": ((10, 14), "FP32 FP16 BF16 INT8 FP8"),
    "RMSNormalization": ((10, 15), "FP32 FP16 BF16"),
    "RotaryEmbedding": ((10, 15), "FP32 FP16 BF16"),
    "TensorScatter": ((10, 15), "FP32 FP16 BF16 INT32"),
    "Swish": ((11, 0), "FP32 FP16 BF16"),
    "DFT": ((11, 2), "FP32 FP16"),
}

# Types the parser accepts beyond the matrix: op -> (since, extra types, where it is written down).
EXTRA_TYPES = {
    # Clip: 10.1-GA onnxOpImporters.cpp, importer Clip: "For INT32 and multi-input clips, use elementwise
    # operators instead" (INT32/INT64 via elementwise min/max); the matrix still lists floats only.
    "Clip": ((10, 0), "INT32 INT64", "onnxOpImporters.cpp (10.1 GA), Clip importer"),
    # Pow: 10.12 changelog "Added support for integer-typed base tensors for Pow operations".
    "Pow": ((10, 12), "INT32 INT64", "onnx-tensorrt Changelog 10.12"),
}

# Inputs that must be known when the engine is built: op -> [(input index, input name, level, lifted in)].
# level "initializer": an initializer or a Constant node; "constant": anything computable from those
# (what the matrix calls "build-time constant" / "resolvable to a constant"). `lifted in`: the version from
# which a tensor computed at run time is accepted (None: never).
CONSTANT_INPUTS = {
    "Slice": [(3, "axes", "initializer", (10, 3))],
    "Pad": [(3, "axes", "initializer", (10, 4))],
    "Squeeze": [(1, "axes", "initializer", (10, 7))],
    "Unsqueeze": [(1, "axes", "initializer", (10, 7))],
    "CumSum": [(1, "axis", "initializer", (10, 8))],
    "OneHot": [(1, "depth", "constant", None)],
    "Dropout": [(2, "training_mode", "initializer", None)],
    **{op: [(1, "axes", "initializer", None)] for op in (
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
        "ReduceProd", "ReduceSum", "ReduceSumSquare")},
}

# After a restriction is lifted, does a run-time tensor still have to fold to a constant?
CONSTANT_AFTER_LIFT = {"Squeeze", "Unsqueeze", "CumSum"}

# Restrictions from the matrix that the lint checks itself (trt_lint.py); every other restriction text of
# an operator found in a graph is reported as a warning to check by hand.
CHECKED_RESTRICTIONS = frozenset(CONSTANT_INPUTS) | {"Constant", "LayerNormalization", "ScatterND", "TopK", "Einsum"}

RESTRICTIONS_10_1 = {
    "AveragePool": "2D or 3D Pooling only. `dilations` must be empty or all ones",
    "Constant": "`sparse_value`, `value_string`, and `value_strings` attributes are unsupported.",
    "DeformConv": "`input` must have 1D or 2D spatial dimensions. `pads` for the beginning and end along each "
                  "spatial axis must be the same",
    "DequantizeLinear": "`x_zero_point` must be zero",
    "EyeLike": "`input` must have static dimensions",
    "GridSample": "Input must be 4D input.",
    "GRU": "For bidirectional GRUs, activation functions must be the same for both the forward and reverse pass",
    "Hardmax": "`axis` dimension of input must be a build-time constant",
    "If": "Output tensors of the two conditional branches must have the same rank and must have different names",
    "Loop": "Scan output length cannot be dynamic. The shape of Loop carried dependencies must be the same "
            "across all loop iterations.",
    "LSTM": "For bidirectional LSTMs, activation functions must be the same for both the forward and reverse "
            "pass. `input_forget` attribute must be 0. `layout` attribute must be 0.",
    "LpPool": "`dilations` must be empty or all ones",
    "MaxPool": "2D or 3D pooling only. `Indices` output tensor unsupported. `dilations` must be empty or all ones",
    "QuantizeLinear": "`y_zero_point` must be 0",
    "RandomNormal": "`seed` value is ignored by TensorRT",
    "RandomNormalLike": "`seed` value is ignored by TensorRT",
    "RandomUniform": "`seed` value is ignored by TensorRT",
    "RandomUniformLike": "`seed` value is ignored by TensorRT",
    "Resize": "only modes half_pixel, pytorch_half_pixel, tf_half_pixel_for_nn, asymmetric, align_corners; "
              "nearest or linear; aspect ratio policy stretch; no antialiasing",
    "RNN": "For bidirectional RNNs, activation functions must be the same for both the forward and reverse pass",
}

# Operators whose output shape depends on the data: TensorRT needs an output allocator for them, the
# runtime could not plan its buffers once, and a CUDA graph cannot capture them.
DATA_DEPENDENT_SHAPE = frozenset({"NonZero", "NonMaxSuppression", "Unique", "Compress"})
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})


def op_types(op: str, version: tuple[int, int]) -> frozenset[str] | None:
    """The data types `op` supports at `version`, or None if the parser cannot import it there."""
    if op in ADDED:
        since, types = ADDED[op]
        return frozenset(types.split()) if version >= since else None
    if op in UNSUPPORTED_10_1 or op not in TYPES_10_1:
        return None
    types = TYPES_10_1[op]
    if op in EXTRA_TYPES and version >= EXTRA_TYPES[op][0]:
        types = types | frozenset(EXTRA_TYPES[op][1].split())
    return types


def added_in(op: str) -> tuple[int, int] | None:
    return ADDED[op][0] if op in ADDED else None
