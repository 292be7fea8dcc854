"""Buffer planning for the TensorRT backend: pure arithmetic, no TensorRT, no CUDA (unit-tested on CPU).

One device arena holds every tensor the engine reads or writes, each at a 256-byte aligned offset
(TensorRT requires I/O addresses aligned to at least their element size and recommends 256 bytes; CUDA's
own allocations are 256-byte aligned):

    [ inputs: obs | prev_action | reward | target_return | reset ][ action ][ state set A ][ state set B ]

The host side is one pinned block laid out exactly like the first two regions, so a tick is one
host->device copy of the inputs region, the engine, and one device->host copy of the action. State
never leaves the device: each state tensor has two buffers (sets A and B); direction 0 reads A and
writes `.next` into B, direction 1 the reverse. TensorRT does not support an input and an output that
alias (NVIDIA/TensorRT issue 4681), which is why the two sets exist at all; the backend swaps them by
address with `set_tensor_address` (or by replaying the CUDA graph captured for that direction).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from policyrt import contract
from policyrt.bundle import Manifest

ALIGNMENT = 256

# TensorRT DataType names (`trt.DataType.X.name`) -> numpy. BF16, FP8, INT4 have no numpy type the
# host could fill, and the step-graph contract never uses them at the I/O.
TRT_DTYPES = {
    "FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32, "INT64": np.int64,
    "BOOL": np.bool_, "INT8": np.int8, "UINT8": np.uint8,
}


class PlanError(ValueError):
    """The engine's I/O does not match the bundle's step-graph contract; the message says where."""


def align(n: int, alignment: int = ALIGNMENT) -> int:
    return (n + alignment - 1) // alignment * alignment


@dataclass(frozen=True)
class EngineTensor:
    """One I/O tensor as the engine reports it (`get_tensor_name/mode/dtype/shape`); batch dim is -1."""
    name: str
    is_input: bool
    dtype: str  # TensorRT DataType name, e.g. "FLOAT"
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Slot:
    """A tensor's place in an arena: `offset` bytes from the base, `nbytes` long, batch-first `shape`."""
    name: str  # contract name: obs, ..., action, state.<name> (both sets), state.<name>.next is the other set
    engine_name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    @property
    def row_nbytes(self) -> int:
        """Bytes of one batch slot (tensors are batch-first and contiguous, so slot b starts at b * row)."""
        return self.nbytes // self.shape[0]


@dataclass(frozen=True)
class StatePair:
    name: str  # manifest state name
    input_name: str  # engine tensor read: state.<name>
    output_name: str  # engine tensor written: state.<name>.next
    init: float
    sets: tuple[Slot, Slot]  # set A, set B


@dataclass(frozen=True)
class BufferPlan:
    batch_size: int
    inputs: tuple[Slot, ...]
    inputs_nbytes: int  # span of the inputs region: one host->device copy per tick
    action: Slot
    host_nbytes: int  # pinned host block: inputs region + action, same offsets as on the device
    states: tuple[StatePair, ...]
    device_nbytes: int

    def bindings(self, direction: int) -> dict[str, int]:
        """Engine tensor name -> device offset for a direction (0: A in, B out; 1: B in, A out)."""
        if direction not in (0, 1):
            raise ValueError(f"direction must be 0 or 1, got {direction}")
        table = {s.engine_name: s.offset for s in self.inputs}
        table[self.action.engine_name] = self.action.offset
        for pair in self.states:
            table[pair.input_name] = pair.sets[direction].offset
            table[pair.output_name] = pair.sets[1 - direction].offset
        return table


def expected_io(manifest: Manifest) -> dict[str, tuple[bool, np.dtype, tuple[int, ...]]]:
    """The contract's engine tensors for this bundle: name -> (is_input, dtype, shape without batch)."""
    return {name: (t.is_input, t.dtype, t.shape(manifest.obs_dim, manifest.act_dim))
            for name, t in contract.step_io(manifest.state).items()}


def check_engine_io(manifest: Manifest, tensors: list[EngineTensor], batch_size: int) -> None:
    """Refuse an engine whose I/O names, directions, dtypes or shapes differ from the contract (all problems)."""
    expected = expected_io(manifest)
    found = {t.name: t for t in tensors}
    problems = [f"missing {'input' if expected[n][0] else 'output'} {n!r}" for n in expected if n not in found]
    problems += [f"unexpected tensor {n!r}" for n in found if n not in expected]
    for name, t in found.items():
        if name not in expected:
            continue
        is_input, dtype, shape = expected[name]
        if t.is_input != is_input:
            problems.append(f"{name!r} is an {'input' if t.is_input else 'output'}, the contract says otherwise")
        got = TRT_DTYPES.get(t.dtype)
        if got is None:
            problems.append(f"{name!r} has dtype {t.dtype}, which no host buffer can hold")
        elif np.dtype(got) != dtype:
            problems.append(f"{name!r} is {np.dtype(got).name}, the contract says {dtype.name}")
        if len(t.shape) != len(shape) + 1 or tuple(t.shape[1:]) != shape:
            problems.append(f"{name!r} has shape {list(t.shape)}, expected [B, {', '.join(map(str, shape))}]")
        elif t.shape[0] not in (-1, batch_size):
            problems.append(f"{name!r} has a fixed batch of {t.shape[0]}, this session wants {batch_size}")
    if problems:
        raise PlanError("engine I/O does not match the bundle: " + "; ".join(problems))


def plan_buffers(manifest: Manifest, batch_size: int, tensors: list[EngineTensor] | None = None) -> BufferPlan:
    """Offsets for every buffer at `batch_size` slots; with `tensors`, the engine's I/O is checked first."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tensors is not None:
        check_engine_io(manifest, tensors, batch_size)
    io = expected_io(manifest)
    offset = 0

    def place(name: str, engine_name: str) -> Slot:
        nonlocal offset
        _, dtype, shape = io[engine_name]
        slot = Slot(name, engine_name, dtype, (batch_size, *shape), offset)
        offset = align(offset + slot.nbytes)
        return slot

    inputs = tuple(place(n, n) for n in contract.INPUTS)
    inputs_nbytes = offset
    action = place(contract.ACTION, contract.ACTION)
    host_nbytes = offset
    sets = [[place(s.input_name, s.input_name) for s in manifest.state] for _ in range(2)]
    states = tuple(
        StatePair(s.name, s.input_name, s.output_name, s.init, (a, b))
        for s, a, b in zip(manifest.state, *sets)
    )
    return BufferPlan(batch_size, inputs, inputs_nbytes, action, host_nbytes, states, max(offset, ALIGNMENT))


def host_views(block: np.ndarray, plan: BufferPlan) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """numpy views of the host inputs and the action inside the pinned block (a uint8 array of
    `plan.host_nbytes`): what `Backend.inputs` and `Backend.action` become, so writing an input is already
    writing the bytes the next tick copies to the device."""
    if block.dtype != np.uint8 or block.shape != (plan.host_nbytes,):
        raise ValueError(f"host block must be uint8[{plan.host_nbytes}], got {block.dtype}{list(block.shape)}")

    def view(slot: Slot) -> np.ndarray:
        return block[slot.offset:slot.offset + slot.nbytes].view(slot.dtype).reshape(slot.shape)

    return {s.name: view(s) for s in plan.inputs}, view(plan.action)


@dataclass(frozen=True)
class Copy:
    """One step of a slot reset. kind: 'zero' (memset dst), 'h2d' (src = offset in the init-row block),
    'd2d' (src = device offset)."""
    kind: str
    dst: int
    src: int
    nbytes: int


def init_rows(plan: BufferPlan) -> tuple[dict[str, int], int, list[tuple[int, np.dtype, int, float]]]:
    """Layout of the pinned block holding one slot's init values per state tensor with a non-zero init.

    Returns (state name -> offset, block size, [(offset, dtype, count, value)] to fill it with).
    """
    offsets, fills, offset = {}, [], 0
    for pair in plan.states:
        if pair.init != 0.0:
            slot = pair.sets[0]
            offsets[pair.name] = offset
            fills.append((offset, slot.dtype, slot.row_nbytes // slot.dtype.itemsize, pair.init))
            offset = align(offset + slot.row_nbytes)
    return offsets, offset, fills


def reset_copies(plan: BufferPlan, mask, current_set: int) -> list[Copy]:
    """Copies that write the manifest's init values into the masked slots of the current state set.

    Zero inits are one memset per run of consecutive slots. Other inits copy one row from the host, then
    double it on the device (1, 2, 4, ... slots), so a run of k slots costs 1 + ceil(log2 k) copies
    instead of k. Issued in order on one stream, each copy only reads rows written before it.
    """
    mask = np.asarray(mask, bool)
    if mask.shape != (plan.batch_size,):
        raise ValueError(f"mask must have shape ({plan.batch_size},), got {mask.shape}")
    row_offsets, _, _ = init_rows(plan)
    copies: list[Copy] = []
    for start, length in _runs(mask):
        for pair in plan.states:
            slot = pair.sets[current_set]
            row = slot.row_nbytes
            first = slot.offset + start * row
            if pair.init == 0.0:
                copies.append(Copy("zero", first, 0, length * row))
                continue
            copies.append(Copy("h2d", first, row_offsets[pair.name], row))
            filled = 1
            while filled < length:
                n = min(filled, length - filled)
                copies.append(Copy("d2d", first + filled * row, first, n * row))
                filled += n
    return copies


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of True."""
    runs, start = [], None
    for i, m in enumerate(mask.tolist() + [False]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i - start))
            start = None
    return runs
