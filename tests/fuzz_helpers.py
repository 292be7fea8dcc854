"""The wire fuzzers' shared machinery (tests/test_fuzz_wire.py, tests/test_fuzz_sim_serve.py): the seeded
frame mutator, the validity judge (protocol.decode with the session's dims), and the process helpers.
Test helpers only, no fakes: the frames go over real ZeroMQ sockets to the real commands."""

from __future__ import annotations

import contextlib
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zmq
from wire_helpers import PATIENCE_S

from policyrt.link import MAX_MESSAGE_BYTES
from policyrt.protocol import HEADER, HEADER_SIZE, MAX_FRAME_BYTES, MsgType, ObsFlag, ProtocolError, decode

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "inverted-pendulum-xlstm.policy"
OBS_DIM, ACT_DIM, LOW, HIGH = 4, 1, -3.0, 3.0
DONE = int(ObsFlag.TERMINATED | ObsFlag.TRUNCATED)
EXTREMES = (float("nan"), float("inf"), float("-inf"), 1e38, -1e38, 3.4e38, -3.4e38, 1e-45, 0.0)
# Valid frames that would end or restart the session on purpose (not what a fuzzer tests).
SESSION_CHANGERS = {MsgType.BYE, MsgType.HELLO, MsgType.SPEC}


# ---- the generator -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fuzzed:
    parts: tuple[bytes, ...]  # one frame, or the frames of one multipart message

    @property
    def oversize(self) -> bool:  # libzmq drops the connection instead of delivering it
        return any(len(p) > MAX_MESSAGE_BYTES for p in self.parts)


class Mutator:
    """Seeded mutations of valid frames from `base()` (a function of the Random)."""

    def __init__(self, seed: int, base):
        self.rng, self.base = random.Random(seed), base
        self._mutations = [
            self._as_is, self._bit_flips, self._truncate, self._extend, self._random_bytes,
            self._extreme_value, self._header_field, self._seq_zero,
        ]

    def frame(self) -> bytes:
        return bytes(self.rng.choice(self._mutations)(bytearray(self.base(self.rng))))

    def next(self) -> Fuzzed:
        roll = self.rng.random()
        if roll < 0.03:
            return Fuzzed(tuple(self.frame() for _ in range(self.rng.randint(2, 4))))
        if roll < 0.035:
            size = self.rng.choice([MAX_FRAME_BYTES + 1, MAX_MESSAGE_BYTES + 1, 4 * MAX_MESSAGE_BYTES])
            return Fuzzed((self.frame()[:HEADER_SIZE].ljust(size, b"\0"),))
        return Fuzzed((self.frame(),))

    def _as_is(self, f):
        return f

    def _bit_flips(self, f):
        for _ in range(self.rng.randint(1, 4)):
            bit = self.rng.randrange(8 * len(f))
            f[bit // 8] ^= 1 << (bit % 8)
        return f

    def _truncate(self, f):
        return f[: self.rng.randrange(len(f))]

    def _extend(self, f):
        return f + self.rng.randbytes(self.rng.randint(1, 64))

    def _random_bytes(self, f):
        return bytearray(self.rng.randbytes(self.rng.randint(0, 200)))

    def _extreme_value(self, f):
        if len(f) >= HEADER_SIZE + 4:
            at = HEADER_SIZE + 4 * self.rng.randrange((len(f) - HEADER_SIZE) // 4)
            struct.pack_into("<f", f, at, self.rng.choice(EXTREMES))
        return f

    def _header_field(self, f):
        # magic, version, type, flags, seq, ack, timestamp, episode, step, payload_len, reserved
        fields = list(HEADER.unpack_from(f))
        i = self.rng.randrange(1, len(fields))
        width = (8, 8, 16, 32, 32, 64, 32, 32, 32, 32)[i - 1]
        fields[i] = self.rng.choice([0, 1, (1 << width) - 1, self.rng.getrandbits(width), fields[i] + 1]) % (1 << width)
        HEADER.pack_into(f, 0, *fields)
        return f

    def _seq_zero(self, f):
        struct.pack_into("<I", f, 8, 0)
        return f


@contextlib.contextmanager
def output_on_failure(proc, output: Path):
    """A failed check kills `proc` and fails with the end of its output (why did it stop answering?).
    The output goes to a file: the fuzzed process logs more than a pipe holds."""
    try:
        yield
    except AssertionError as exc:
        proc.kill()
        proc.wait(PATIENCE_S)
        raise AssertionError(f"{exc}\n--- process output ---\n{output.read_text()[-6000:]}") from None


def finish(proc, output: Path) -> str:
    """Wait for the process to exit 0 and return its output."""
    code = proc.wait(PATIENCE_S)
    text = output.read_text()
    assert code == 0, text[-6000:]
    return text


def send(link, fuzzed: Fuzzed) -> bool:
    """Send the frame or multipart message; False when the socket could not take it (no peer at
    the moment, e.g. right after a dropped connection): then it was not sent and is not counted."""
    try:
        link.sock.send_multipart(fuzzed.parts)
        return True
    except zmq.Again:
        return False


def judge(frame: bytes, **dims):
    """The decoded message, or None for a frame the receiver must reject."""
    if len(frame) > MAX_FRAME_BYTES:
        return None
    try:
        return decode(frame, **dims)
    except ProtocolError:
        return None


def check_action(act) -> None:
    assert act.type is MsgType.ACT
    assert np.isfinite(act.values).all() and ((act.values >= LOW) & (act.values <= HIGH)).all(), act


# ---- robot-side frames against `policyrt run`, lockstep ------------------------------------------
