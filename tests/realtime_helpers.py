"""Test ends and stand-ins for the real-time mode: a hand-driven robot with both links, sessions
that misbehave on purpose, and a way to wait on counters instead of on the wall clock."""

from __future__ import annotations

import threading
import time

import numpy as np
from stand_in_session import LinearSession, StandInManifest
from wire_helpers import PATIENCE_S

from policyrt.protocol import Encoder, Message, MsgType
from policyrt.spec import Spec
from policyrt.stream import open_session_link, open_stream_link


class RealtimeRobot:
    """The robot end of a real-time session (binds both links), driven by the test."""

    def __init__(self, endpoint: str, spec: Spec):
        self.session = open_session_link(endpoint, bind=True)
        self.stream = open_stream_link(endpoint, bind=True)
        for link in (self.session, self.stream):
            link.obs_dim, link.act_dim = spec.obs_dim, spec.act_dim
        self.spec = spec
        self.enc = Encoder(obs_dim=spec.obs_dim, act_dim=spec.act_dim)

    def accept(self) -> Message:
        """Wait for HELLO (skipping repeats) and answer with SPEC."""
        hello = recv_type(self.session, MsgType.HELLO)
        self.session.send(self.enc.spec(self.spec, ack=hello.seq))
        return hello

    def obs(self, obs, reward=0.0, flags=0, episode=0, step=0) -> int:
        frame = self.enc.obs(np.asarray(obs, np.float32), reward, flags=flags, episode=episode, step=step)
        assert self.stream.send(frame)
        return self.enc.last_seq

    def control(self, mtype: MsgType) -> None:
        assert self.session.send(self.enc.control(mtype))

    def act_answering(self, seq: int) -> Message:
        """The first ACT whose ack is `seq` (earlier ACTs are skipped)."""
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline:
            msg = self.stream.recv(1.0)
            if msg is not None and msg.type is MsgType.ACT and msg.ack == seq:
                return msg._replace(values=msg.values.copy())
        raise AssertionError(f"no ACT answering seq {seq}")

    def next_act(self) -> Message:
        msg = recv_type(self.stream, MsgType.ACT)
        return msg._replace(values=msg.values.copy())

    def close(self) -> None:
        self.session.close()
        self.stream.close()


def recv_type(link, mtype: MsgType) -> Message:
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        msg = link.recv(1.0)
        if msg is not None and msg.type is mtype:
            return msg
    raise AssertionError(f"no {mtype.name} arrived")


def wait_until(predicate, what: str) -> None:
    """Poll a condition on counters; the timeout only guards against a hang."""
    deadline = time.monotonic() + PATIENCE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.001)


def spec(obs_dim=4, act_dim=1, low=-3.0, high=3.0, rate=0.0) -> Spec:
    return Spec(
        obs_dim=obs_dim,
        act_dim=act_dim,
        control_rate_hz=rate or None,
        action_low=np.full(act_dim, low, np.float32),
        action_high=np.full(act_dim, high, np.float32),
        robot="scripted real-time robot",
    )


def linear_session(gain=((1.0, 0.0, 0.0, 0.0),), batch_size=1, **kwargs) -> LinearSession:
    gain = np.asarray(gain, np.float32)
    act_dim, obs_dim = gain.shape
    manifest = StandInManifest(
        obs_dim, act_dim, np.full(act_dim, -3.0, np.float32), np.full(act_dim, 3.0, np.float32)
    )
    return BatchedLinearSession(manifest=manifest, gain=gain, batch_size=batch_size, **kwargs)


class BatchedLinearSession(LinearSession):
    """LinearSession over a [B, obs_dim] batch, recording resets per slot."""

    def reset(self, mask=None) -> None:
        if self.record:
            self.calls.append(("reset", None if mask is None else np.array(mask, copy=True)))


class NaNSession(BatchedLinearSession):
    """Returns NaN while `poisoned` is set (a policy whose output went non-finite)."""

    poisoned = False

    def step(self, obs, reward=0.0, prev_action=None, out=None):
        action = super().step(obs, reward, prev_action, out)
        if self.poisoned:
            action[...] = np.nan
        return action


class SlowSession(BatchedLinearSession):
    """Sleeps `delay_s` per step while `slow` is set: an inference that overruns its deadline."""

    slow = False
    delay_s = 0.0
    slow_steps = 0

    def step(self, obs, reward=0.0, prev_action=None, out=None):
        if self.slow:
            self.slow_steps += 1
            time.sleep(self.delay_s)
        return super().step(obs, reward, prev_action, out)


def run_in_thread(controller, **kwargs):
    """Start controller.run in a thread; returns (thread, result box)."""
    box = {}

    def target():
        try:
            box["result"] = controller.run(**kwargs)
        except BaseException as exc:  # surfaced by the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box
