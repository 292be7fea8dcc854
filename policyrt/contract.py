"""The step-graph contract: the one definition of what a bundle's step graph reads and writes.

One call of the step graph advances B slots (independent episodes) by one tick. Every tensor is
batch-first:

    inputs   obs [B, obs_dim], prev_action [B, act_dim], reward [B], target_return [B] (float32),
             reset [B] (bool), then state.<name> per row of the state table
    outputs  action [B, act_dim] (float32), then state.<name>.next per row (same shape and dtype)

The state table (manifest `state`, a step module's `specs`) is a list of StateTensor rows. State is
float32, or int32 for counters: never int64, whose I/O TensorRT 8.6/10.3 restrict. The host never
interprets state; on `reset` the graph re-initializes the slot itself.

Everything that names, orders, allocates or checks these tensors reads them from here: the ONNX
export, the graph checks, parity, the TensorRT profile and buffer plan, the manifest, every backend.
numpy only (board-side).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

OBS, PREV_ACTION, REWARD, TARGET_RETURN, RESET = "obs", "prev_action", "reward", "target_return", "reset"
ACTION = "action"
FLOAT32, BOOL = np.dtype(np.float32), np.dtype(np.bool_)
_STATE_PREFIX, _NEXT_SUFFIX = "state.", ".next"


def state_name(name: str) -> str:
    """The graph input that carries state tensor `name` (a manifest state name) into a tick."""
    return f"{_STATE_PREFIX}{name}"


def next_name(name: str) -> str:
    """The graph output that carries state tensor `name` out of a tick, into the next one."""
    return f"{_STATE_PREFIX}{name}{_NEXT_SUFFIX}"


def is_state(tensor_name: str) -> bool:
    """Is this graph tensor a state input or output (state.<name> or state.<name>.next)?"""
    return tensor_name.startswith(_STATE_PREFIX)


FLOAT32_MAX = float(np.finfo(np.float32).max)  # a Python float: comparing with it casts nothing to float32
STATE_DTYPES = ("float32", "int32")  # what a state tensor may be (see the module docstring)
# A bound far above any real policy's state (an xLSTM's C is NH x DH x DH), so that a manifest cannot
# make the runtime allocate gigabytes per slot before the graph is even checked.
MAX_STATE_ELEMENTS = 1 << 26


def _is_int(value) -> bool:
    """A JSON integer (bool is an int to Python, never to a manifest)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_json_number(value) -> bool:
    """A JSON number as json.loads gives it (bool, an int to Python, is not one)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class StateTensor:
    """One row of the state table: what a step module declares and the manifest records."""

    name: str
    shape: tuple[int, ...]  # without the batch dimension
    dtype: str = "float32"  # numpy name: float32, or int32 for counters (never int64)
    init: float = 0.0  # every element's value in a fresh (or reset) slot

    @property
    def input_name(self) -> str:
        return state_name(self.name)

    @property
    def output_name(self) -> str:
        return next_name(self.name)

    def to_dict(self) -> dict:
        """The manifest's row: {name, shape, dtype, init}."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "init": self.init}

    @classmethod
    def from_dict(cls, row: dict) -> StateTensor:
        """Read a manifest row; dtype and init are optional there (float32, 0.0). KeyError if a key is
        missing; ValueError naming the key if a value is not one a graph and its buffers can hold."""
        if not isinstance(row, dict):
            raise ValueError(f"row is {row!r}: must be an object {{name, shape, dtype, init}}")
        name, shape, dtype, init = row["name"], row["shape"], row.get("dtype", "float32"), row.get("init", 0.0)
        if not isinstance(name, str) or not name:
            raise ValueError(f"name is {name!r}: must be a non-empty string")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 1 for d in shape):
            raise ValueError(f"shape is {shape!r}: must be a list of integers >= 1 (without the batch dimension)")
        if int(np.prod(shape)) > MAX_STATE_ELEMENTS:
            raise ValueError(f"shape {shape} holds {int(np.prod(shape))} elements per slot, more than {MAX_STATE_ELEMENTS}")
        if dtype not in STATE_DTYPES:
            raise ValueError(f"dtype is {dtype!r}: must be one of {', '.join(STATE_DTYPES)}")
        if not is_json_number(init) or not abs(init) <= FLOAT32_MAX:  # NaN, infinities, and 1e39 (inf in float32)
            raise ValueError(f"init is {init!r}: must be a finite number (in float32)")
        if dtype == "int32" and (init != int(init) or not -(2**31) <= init < 2**31):
            raise ValueError(f"init is {init!r}: an int32 state needs an integer init within int32")
        return cls(name, tuple(shape), dtype, float(init))


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the step graph. `dims` follow the batch dimension; the words "obs_dim" and "act_dim"
    stand for the bundle's sizes, so the table below is written once for every bundle."""

    name: str
    is_input: bool
    dtype: np.dtype
    dims: tuple[int | str, ...]
    meaning: str

    def shape(self, obs_dim: int, act_dim: int) -> tuple[int, ...]:
        """The shape without the batch dimension, for a bundle of these sizes."""
        sizes = {"obs_dim": obs_dim, "act_dim": act_dim}
        return tuple(sizes[d] if isinstance(d, str) else d for d in self.dims)

    def buffer(self, batch: int, obs_dim: int, act_dim: int, fill=0) -> np.ndarray:
        """A host array of this tensor for `batch` slots, every element `fill`."""
        return np.full((batch, *self.shape(obs_dim, act_dim)), fill, self.dtype)


# In the step module's argument order, which is also the graph's input order, the manifest's `inputs`
# and the layout of the TensorRT backend's host input region.
HOST_INPUTS = (
    TensorSpec(OBS, True, FLOAT32, ("obs_dim",), "the observation, raw (the graph normalizes it)"),
    TensorSpec(PREV_ACTION, True, FLOAT32, ("act_dim",),
               "the action applied at the previous tick (after the safety chain); ignored on reset"),
    TensorSpec(REWARD, True, FLOAT32, (), "the reward the previous action earned; ignored on reset"),
    TensorSpec(TARGET_RETURN, True, FLOAT32, (), "the commanded return; read on reset only"),
    TensorSpec(RESET, True, BOOL, (), "True: this tick starts a new episode in the slot"),
)
INPUTS = tuple(t.name for t in HOST_INPUTS)
ACTION_OUTPUT = TensorSpec(ACTION, False, FLOAT32, ("act_dim",), "the action, already within the bundle's bounds")


def state_io(state: StateTensor) -> tuple[TensorSpec, TensorSpec]:
    """The graph input and output of one state tensor: same shape and dtype, the output is next tick's input."""
    dtype = np.dtype(state.dtype)
    return (TensorSpec(state.input_name, True, dtype, tuple(state.shape), f"state {state.name}, as the last tick left it"),
            TensorSpec(state.output_name, False, dtype, tuple(state.shape), f"state {state.name} after this tick"))


def step_io(states: Iterable[StateTensor]) -> dict[str, TensorSpec]:
    """Every tensor of the step graph by name, in graph order: the inputs, then the outputs."""
    pairs = [state_io(s) for s in states]
    ordered = [*HOST_INPUTS, *(i for i, _ in pairs), ACTION_OUTPUT, *(o for _, o in pairs)]
    return {t.name: t for t in ordered}


def input_names(states: Iterable[StateTensor]) -> list[str]:
    """The graph's input names in order: the five host inputs, then state.<name> per state tensor."""
    return [*INPUTS, *(s.input_name for s in states)]


def output_names(states: Iterable[StateTensor]) -> list[str]:
    """The graph's output names in order: action, then state.<name>.next per state tensor."""
    return [ACTION, *(s.output_name for s in states)]


def host_input_buffers(obs_dim: int, act_dim: int, batch: int, target_return: float) -> dict[str, np.ndarray]:
    """Fresh host inputs for `batch` slots: zeros, except that every slot starts an episode (reset True)
    commanded with `target_return`, so the first tick needs no explicit reset."""
    fill = {TARGET_RETURN: target_return, RESET: True}
    return {t.name: t.buffer(batch, obs_dim, act_dim, fill.get(t.name, 0)) for t in HOST_INPUTS}


def initial_state(states: Iterable[StateTensor], batch: int) -> dict[str, np.ndarray]:
    """State arrays of `batch` fresh slots, by state name."""
    return {s.name: np.full((batch, *s.shape), s.init, np.dtype(s.dtype)) for s in states}



def _manifest_field(spec: TensorSpec) -> str:
    """The manifest field a tensor's shape comes from, to name in a mismatch."""
    if "obs_dim" in spec.dims:
        return "obs_dim"
    if "act_dim" in spec.dims:
        return "act_dim"
    if is_state(spec.name):
        return f"state {spec.name.removeprefix(_STATE_PREFIX).removesuffix(_NEXT_SUFFIX)!r}"
    return "the contract"


def _shape_text(shape) -> str:
    return "[" + ", ".join("batch" if i == 0 and d is None else "?" if d is None else str(d)
                           for i, d in enumerate(shape)) + "]"


def check_graph_io(manifest, inputs: dict, outputs: dict) -> None:
    """Check a step graph's tensors against what the manifest says the graph is.

    inputs/outputs: {tensor name: (shape with None for a dynamic dim, numpy dtype name)}, as a backend
    reads them from its graph. Every contract tensor must be there, nothing else; the batch dimension
    must be dynamic; every static dim and every dtype must be the manifest's (obs_dim, act_dim, each
    state row's shape and dtype). Raises ValueError naming the manifest field and the tensor, then how
    many other problems there are; a mismatch found here would otherwise surface at the first step as
    a broadcast error that names neither.
    """
    problems = []
    expected = step_io(manifest.state)
    for is_input, graph in ((True, inputs), (False, outputs)):
        kind = "input" if is_input else "output"
        wanted = {name: spec for name, spec in expected.items() if spec.is_input == is_input}
        for name in (n for n in wanted if n not in graph):
            problems.append(f"{_manifest_field(wanted[name])}: the graph has no {kind} {name!r}")
        for name in sorted(graph.keys() - wanted.keys()):
            problems.append(f"the graph has an {kind} {name!r} that the contract and the manifest's state do not name")
        for name, spec in wanted.items():
            if name not in graph:
                continue
            shape, dtype = graph[name]
            want = (None, *spec.shape(manifest.obs_dim, manifest.act_dim))
            field = _manifest_field(spec)
            if len(shape) != len(want) or any(g is not None and g != w for g, w in zip(shape[1:], want[1:])):
                problems.append(f"{field}: the manifest makes {name} {_shape_text(want)}, the graph's is {_shape_text(shape)}")
            elif shape[0] is not None:
                problems.append(f"{name}: the graph's batch dimension is fixed at {shape[0]}; it must be dynamic")
            if dtype != spec.dtype.name:
                problems.append(f"{field}: the manifest makes {name} {spec.dtype.name}, the graph's is {dtype}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ValueError(f"step graph does not match the manifest: {problems[0]}{more}")
