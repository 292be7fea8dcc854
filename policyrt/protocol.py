"""The policyrt wire protocol: single-frame binary messages between a robot and its controller.

docs/PROTOCOL.md is the normative, byte-by-byte specification; this module is its Python
implementation. Every message is one ZeroMQ frame: a 40-byte little-endian header followed by a
float32 payload (SPEC alone appends a UTF-8 JSON text after its floats; policyrt/spec.py owns that
payload and the Spec it carries).

Encoders trust their caller and write into buffers preallocated once per sender, because they sit
on the hot path. Decoders trust nothing: every check failure raises one `ProtocolError` whose
`kind` names the failure, so loops can count errors per kind and keep running.

Board-side module: standard library and numpy only, Python 3.10.
"""

from __future__ import annotations

import enum
import struct
import time
from typing import NamedTuple

import numpy as np

# Defined in policyrt/protocol_errors.py; the loops and tests import them from here.
from policyrt.protocol_errors import ERROR_KINDS, ErrorTally, ProtocolError  # noqa: F401
from policyrt.spec import Spec, SpecError, decode_spec_payload, encode_spec_payload

MAGIC = b"PLRT"
# 2: one terminal-observation rule for every number of environments (docs/PROTOCOL.md, section 9):
# a terminal OBS is answered like any other, as OBS_BATCH rows always were. Version 1 peers left a
# terminal OBS unanswered, so the two cannot share a session: each refuses the other's frames.
VERSION = 2

# magic, version, type, flags, seq, ack, timestamp_ns, episode, step, payload_len, reserved
HEADER = struct.Struct("<4sBBHIIQIIII")
HEADER_SIZE = HEADER.size  # 40: a multiple of 8, so the payload that follows stays aligned
assert HEADER_SIZE == 40

# Receive buffers are sized for this; it bounds every valid frame: a SPEC (with names) and, since
# decode refuses a SPEC whose data frames would not fit (`data_frame_bytes`), every OBS/ACT and
# batched frame of an accepted session.
MAX_FRAME_BYTES = 64 * 1024

_SEQ_MOD = 1 << 32
_F32 = np.dtype("<f4")


class MsgType(enum.IntEnum):
    HELLO = 1  # controller -> robot: start a session, please send SPEC
    SPEC = 2  # robot -> controller: dims, rate, bounds, names
    OBS = 3  # robot -> controller: observation + reward of the last tick
    ACT = 4  # controller -> robot: action answering one OBS
    ESTOP = 5  # either way: latch the emergency stop
    CLEAR = 6  # either way: release a latched emergency stop
    HEARTBEAT = 7  # either way: liveness only
    BYE = 8  # either way: the sender ends the session on purpose
    # The batched extension (docs/PROTOCOL.md, section 10): only in sessions whose SPEC announced
    # num_envs > 1, so a single-environment session never sees them.
    OBS_BATCH = 9  # robot -> controller: one row per environment, per-slot flags/episode/step
    ACT_BATCH = 10  # controller -> robot: one action row per environment, per-slot flags


class ObsFlag(enum.IntFlag):
    RESET = 1  # first observation of a new episode; its reward is 0
    # A terminal OBS is answered like any other; the robot ignores that ACT's action and resets.
    TERMINATED = 2  # the episode ended in a terminal state
    TRUNCATED = 4  # the episode was cut off (time limit)


class ActFlag(enum.IntFlag):
    FALLBACK = 1  # the action is the controller's safe fallback, not the policy's output
    ESTOP = 2  # the controller has an emergency stop latched: go safe


class SlotFlag(enum.IntFlag):
    """Per-slot flags of an OBS_BATCH row: ObsFlag's bits plus IDLE. (ACT_BATCH rows carry
    ActFlag bits.)"""

    RESET = 1  # the slot's first observation of a new episode; its reward is 0
    TERMINATED = 2  # the slot's episode ended in a terminal state; its action row is ignored
    TRUNCATED = 4  # the slot's episode was cut off; its action row is ignored
    IDLE = 8  # the slot runs no episode this tick: the row is zeros, its action row is ignored


# Flag bits a message type may carry; anything else is rejected, so a future flag can never be
# silently ignored by an older peer (new flags come with a new VERSION).
ALLOWED_FLAGS = {
    MsgType.OBS: int(ObsFlag.RESET | ObsFlag.TERMINATED | ObsFlag.TRUNCATED),
    MsgType.ACT: int(ActFlag.FALLBACK | ActFlag.ESTOP),
}
# Per-slot flag bits of the batched messages (their header flags stay 0).
ALLOWED_SLOT_FLAGS = {
    MsgType.OBS_BATCH: int(SlotFlag.RESET | SlotFlag.TERMINATED | SlotFlag.TRUNCATED | SlotFlag.IDLE),
    MsgType.ACT_BATCH: int(ActFlag.FALLBACK | ActFlag.ESTOP),
}


def batch_frame_bytes(mtype: MsgType, num_envs: int, dim: int) -> int:
    """Size of an OBS_BATCH (dim = obs_dim) or ACT_BATCH (dim = act_dim) frame."""
    per_slot = 3 + dim + 1 if mtype is MsgType.OBS_BATCH else 1 + dim
    return HEADER_SIZE + 4 * num_envs * per_slot


def data_frame_bytes(spec: Spec) -> int:
    """The largest OBS/ACT (or, for num_envs > 1, OBS_BATCH/ACT_BATCH) frame of a session with
    this SPEC: a SPEC whose data frames exceed MAX_FRAME_BYTES could never carry one."""
    if spec.num_envs == 1:
        return HEADER_SIZE + 4 * max(spec.obs_dim + 1, spec.act_dim)
    return max(
        batch_frame_bytes(MsgType.OBS_BATCH, spec.num_envs, spec.obs_dim),
        batch_frame_bytes(MsgType.ACT_BATCH, spec.num_envs, spec.act_dim),
    )

# Types whose payload must be empty in this version.
_EMPTY_TYPES = (MsgType.HELLO, MsgType.ESTOP, MsgType.CLEAR, MsgType.HEARTBEAT, MsgType.BYE)

def version_mismatch(version: int) -> str:
    """The one-line refusal of a peer speaking another protocol version."""
    older = "the peer" if version < VERSION else "this side"
    return (
        f"peer speaks protocol version {version}, this side speaks {VERSION}: upgrade {older} "
        "(versions never mix; docs/PROTOCOL.md, section 9)"
    )


class Message(NamedTuple):
    """One decoded frame. `values` is a float32 view into the received buffer: copy it if you
    keep it past the next receive into that buffer. Batched frames carry 2-D `values` (one row
    per slot) and `slots`, a uint32 view [3, P] of the per-slot flags, episode and step (for
    ACT_BATCH [1, P]: flags only)."""

    type: MsgType
    flags: int
    seq: int
    ack: int
    timestamp_ns: int
    episode: int
    step: int
    values: np.ndarray  # OBS: obs then reward; ACT: action; SPEC: its numeric part; else empty
    spec: Spec | None = None  # SPEC only
    slots: np.ndarray | None = None  # OBS_BATCH / ACT_BATCH only

    @property
    def obs(self) -> np.ndarray:
        return self.values[..., :-1]

    @property
    def reward(self) -> float:
        return float(self.values[-1])

    @property
    def rewards(self) -> np.ndarray:
        """OBS_BATCH: the reward column, one per slot."""
        return self.values[:, -1]


# Lookups by the raw header byte: a dict hit is ~10x cheaper than calling the enum, and decode
# runs twice per control tick.
_TYPE_BY_CODE = {int(t): t for t in MsgType}
_FLAGS_BY_CODE = {int(t): ALLOWED_FLAGS.get(t, 0) for t in MsgType}


def decode(
    frame, *, obs_dim: int | None = None, act_dim: int | None = None, num_envs: int | None = None
) -> Message:
    """Decode and validate one frame (bytes, bytearray or memoryview, exactly the frame's bytes).

    obs_dim / act_dim / num_envs come from the SPEC of the session; when given, OBS and ACT
    payloads must match them (batched frames cannot be read without the dims at all). Raises
    ProtocolError on anything the specification does not allow; the checks run in the order
    docs/PROTOCOL.md section 7 lists, so every implementation names the same kind.
    """
    n = len(frame)
    if n < HEADER_SIZE:
        raise ProtocolError("truncated", f"{n} bytes, shorter than the {HEADER_SIZE}-byte header")
    magic, version, code, flags, seq, ack, ts, episode, step, plen, _reserved = HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise ProtocolError("magic", f"magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise ProtocolError("version", version_mismatch(version))
    mtype = _TYPE_BY_CODE.get(code)
    if mtype is None:
        raise ProtocolError("type", f"unknown message type {code}")
    if flags & ~_FLAGS_BY_CODE[code]:
        raise ProtocolError(
            "flags", f"{mtype.name} with flags 0x{flags:04x}; allowed 0x{_FLAGS_BY_CODE[code]:04x}"
        )
    if not seq:
        raise ProtocolError("seq", f"{mtype.name} with seq 0 (0 is never a sequence number)")
    if n != HEADER_SIZE + plen:
        kind = "truncated" if n < HEADER_SIZE + plen else "length"
        raise ProtocolError(
            kind, f"{mtype.name} announces {plen} payload bytes, frame holds {n - HEADER_SIZE}"
        )

    if mtype is MsgType.OBS or mtype is MsgType.ACT:  # the hot path first
        if plen % 4:
            raise ProtocolError("length", f"{mtype.name} payload of {plen} bytes is not whole float32s")
        count = plen >> 2
        if mtype is MsgType.OBS:
            if count < 1:
                raise ProtocolError("length", "OBS payload must hold at least the reward")
            if obs_dim is not None and count != obs_dim + 1:
                raise ProtocolError(
                    "dims", f"OBS holds {count - 1} observation values, SPEC says obs_dim={obs_dim}"
                )
        elif act_dim is not None and count != act_dim:
            raise ProtocolError("dims", f"ACT holds {count} action values, SPEC says act_dim={act_dim}")
        values = np.frombuffer(frame, _F32, count, HEADER_SIZE)
        if not np.isfinite(values).all():
            raise ProtocolError("nonfinite", f"{mtype.name} seq {seq} carries NaN or infinity")
        return Message(mtype, flags, seq, ack, ts, episode, step, values)
    if mtype is MsgType.OBS_BATCH or mtype is MsgType.ACT_BATCH:
        return _decode_batch(frame, mtype, seq, ack, ts, episode, step, plen, obs_dim, act_dim, num_envs)
    if mtype is MsgType.SPEC:
        try:
            spec, values = decode_spec_payload(frame, HEADER_SIZE, plen)
        except SpecError as exc:
            raise ProtocolError("spec", str(exc)) from None
        if data_frame_bytes(spec) > MAX_FRAME_BYTES:
            raise ProtocolError(
                "spec",
                f"SPEC obs_dim={spec.obs_dim} act_dim={spec.act_dim} num_envs={spec.num_envs} makes "
                f"{data_frame_bytes(spec)}-byte data frames; receivers take at most {MAX_FRAME_BYTES}",
            )
        return Message(mtype, flags, seq, ack, ts, episode, step, values, spec)
    if plen:  # HELLO, ESTOP, CLEAR, HEARTBEAT, BYE
        raise ProtocolError("length", f"{mtype.name} must have an empty payload, has {plen} bytes")
    return Message(mtype, flags, seq, ack, ts, episode, step, _EMPTY)


_EMPTY = np.zeros(0, _F32)
_EMPTY.flags.writeable = False
_U32 = np.dtype("<u4")


def _decode_batch(frame, mtype, seq, ack, ts, episode, step, plen, obs_dim, act_dim, num_envs) -> Message:
    """OBS_BATCH: u32 flags[P], u32 episode[P], u32 step[P], f32 rows[P][obs_dim + 1].
    ACT_BATCH: u32 flags[P], f32 rows[P][act_dim]. P follows from payload_len and the dims."""
    is_obs = mtype is MsgType.OBS_BATCH
    dim = obs_dim if is_obs else act_dim
    if dim is None:
        raise ProtocolError("unexpected", f"{mtype.name} before SPEC: its layout needs the session's dims")
    columns, table_rows = (dim + 1, 3) if is_obs else (dim, 1)
    slot_bytes = 4 * (table_rows + columns)
    if plen == 0 or plen % slot_bytes:
        raise ProtocolError(
            "length", f"{mtype.name} payload of {plen} bytes is not a whole number of {slot_bytes}-byte slots"
        )
    count = plen // slot_bytes
    if num_envs is not None and count != num_envs:
        raise ProtocolError("dims", f"{mtype.name} holds {count} slots, SPEC says num_envs={num_envs}")
    slots = np.frombuffer(frame, _U32, table_rows * count, HEADER_SIZE).reshape(table_rows, count)
    values = np.frombuffer(frame, _F32, count * columns, HEADER_SIZE + 4 * table_rows * count)
    values = values.reshape(count, columns)
    undefined = slots[0] & np.uint32(~ALLOWED_SLOT_FLAGS[mtype] & 0xFFFFFFFF)
    if undefined.any():
        slot = int(np.flatnonzero(undefined)[0])
        raise ProtocolError(
            "flags",
            f"{mtype.name} slot {slot} has flags 0x{int(slots[0][slot]):04x}; "
            f"allowed 0x{ALLOWED_SLOT_FLAGS[mtype]:04x}",
        )
    if not np.isfinite(values).all():
        raise ProtocolError("nonfinite", f"{mtype.name} seq {seq} carries NaN or infinity")
    return Message(mtype, 0, seq, ack, ts, episode, step, values, None, slots)


class Encoder:
    """Writes one sender's messages. Owns the sender's sequence counter (1, 2, ... wrapping to 1
    after 2**32 - 1; 0 is never sent, so ack=0 can mean "answers nothing").

    OBS and ACT are written into buffers allocated once for the session's dims; the returned
    bytearray is reused by the next call of the same kind, so send it before encoding another.
    num_envs > 1 also preallocates the batched frames (OBS_BATCH, ACT_BATCH).
    """

    def __init__(self, obs_dim: int = 0, act_dim: int = 0, num_envs: int = 1):
        self._seq = 0
        self.obs_dim, self.act_dim, self.num_envs = obs_dim, act_dim, num_envs
        if num_envs > 1:
            self._init_batch_buffers(num_envs)
        self._obs_buf = bytearray(HEADER_SIZE + 4 * (obs_dim + 1))
        self._obs_values = np.frombuffer(self._obs_buf, _F32, obs_dim + 1, HEADER_SIZE)
        self._act_buf = bytearray(HEADER_SIZE + 4 * act_dim)
        self._act_values = np.frombuffer(self._act_buf, _F32, act_dim, HEADER_SIZE)
        self._small_buf = bytearray(HEADER_SIZE)

    @property
    def last_seq(self) -> int:
        """Sequence number of the most recently encoded message (0 before the first)."""
        return self._seq

    def _next_seq(self) -> int:
        self._seq = self._seq % (_SEQ_MOD - 1) + 1
        return self._seq

    def _header(self, buf, mtype, flags, ack, episode, step, plen) -> None:
        HEADER.pack_into(
            buf,
            0,
            MAGIC,
            VERSION,
            mtype,
            flags,
            self._next_seq(),
            ack,
            time.monotonic_ns(),
            episode,
            step,
            plen,
            0,
        )

    def obs(self, obs, reward: float, *, flags: int = 0, episode: int = 0, step: int = 0) -> bytearray:
        self._obs_values[:-1] = obs
        self._obs_values[-1] = reward
        self._header(self._obs_buf, MsgType.OBS, flags, 0, episode, step, 4 * (self.obs_dim + 1))
        return self._obs_buf

    def act(self, action, *, ack: int, flags: int = 0, episode: int = 0, step: int = 0) -> bytearray:
        self._act_values[:] = action
        self._header(self._act_buf, MsgType.ACT, flags, ack, episode, step, 4 * self.act_dim)
        return self._act_buf

    def _init_batch_buffers(self, n: int) -> None:
        obs_cols, act_cols = self.obs_dim + 1, self.act_dim
        self._obs_batch_buf = bytearray(HEADER_SIZE + 4 * n * (3 + obs_cols))
        self._obs_batch_slots = np.frombuffer(self._obs_batch_buf, _U32, 3 * n, HEADER_SIZE).reshape(3, n)
        self._obs_batch_values = np.frombuffer(
            self._obs_batch_buf, _F32, n * obs_cols, HEADER_SIZE + 12 * n
        ).reshape(n, obs_cols)
        self._act_batch_buf = bytearray(HEADER_SIZE + 4 * n * (1 + act_cols))
        self._act_batch_flags = np.frombuffer(self._act_batch_buf, _U32, n, HEADER_SIZE)
        self._act_batch_values = np.frombuffer(
            self._act_batch_buf, _F32, n * act_cols, HEADER_SIZE + 4 * n
        ).reshape(n, act_cols)

    def obs_batch(self, obs, rewards, flags, episodes, steps) -> bytearray:
        """OBS_BATCH: obs [P, obs_dim], rewards/flags/episodes/steps [P]."""
        self._obs_batch_values[:, :-1] = obs
        self._obs_batch_values[:, -1] = rewards
        slots = self._obs_batch_slots
        slots[0], slots[1], slots[2] = flags, episodes, steps
        plen = len(self._obs_batch_buf) - HEADER_SIZE
        self._header(self._obs_batch_buf, MsgType.OBS_BATCH, 0, 0, 0, 0, plen)
        return self._obs_batch_buf

    def act_batch(self, actions, flags, *, ack: int) -> bytearray:
        """ACT_BATCH answering OBS_BATCH `ack`: actions [P, act_dim], per-slot flags [P]."""
        self._act_batch_values[:] = actions
        self._act_batch_flags[:] = flags
        plen = len(self._act_batch_buf) - HEADER_SIZE
        self._header(self._act_batch_buf, MsgType.ACT_BATCH, 0, ack, 0, 0, plen)
        return self._act_batch_buf

    def control(self, mtype: MsgType, *, ack: int = 0, episode: int = 0, step: int = 0) -> bytearray:
        """HELLO, ESTOP, CLEAR, HEARTBEAT or BYE: a header with an empty payload."""
        if mtype not in _EMPTY_TYPES:
            raise ValueError(f"{mtype!r} carries a payload; use its own encoder method")
        self._header(self._small_buf, mtype, 0, ack, episode, step, 0)
        return self._small_buf

    def spec(self, spec: Spec, *, ack: int = 0) -> bytes:
        """SPEC is sent once per session, so it is built fresh rather than preallocated."""
        payload = encode_spec_payload(spec)
        buf = bytearray(HEADER_SIZE + len(payload))
        self._header(buf, MsgType.SPEC, 0, ack, 0, 0, len(payload))
        buf[HEADER_SIZE:] = payload
        return bytes(buf)
