"""One robot as the real-time controller sees it: its two links and what it last said.

`poll()` drains both links without blocking and keeps only what a tick needs: the newest valid
observation (older ones that arrived in the same tick are dropped and counted), the e-stop latch
(`control`, the SessionControl every driver uses for ESTOP/CLEAR/BYE/HEARTBEAT/unexpected), and
whether the robot's session is up. Every rejected frame is counted per kind in the shared
`ErrorTally`; nothing a peer sends can raise out of `poll()`.

The HELLO handshake is not a blocking step here, unlike lockstep: a robot that is not there yet,
restarted, or fell silent is asked again (`hello_retry_s`) from inside the tick loop, so the loop
keeps its rate and keeps every other robot served while one reconnects.

Board-side module: standard library, numpy and pyzmq only, Python 3.10.
"""

from __future__ import annotations

import logging

import numpy as np

from policyrt.controllers.core import SpecMismatchError, check_spec
from policyrt.protocol import Encoder, ErrorTally, MsgType, ObsFlag, ProtocolError
from policyrt.session_control import Control, SessionControl
from policyrt.spec import Spec
from policyrt.stream import open_session_link, open_stream_link

log = logging.getLogger(__name__)

_RESET = int(ObsFlag.RESET)
_DONE = int(ObsFlag.TERMINATED | ObsFlag.TRUNCATED)
# A flood on the reliable session link is drained at most this many frames per tick, so garbage
# arriving faster than the loop can reject it delays the backlog, never the tick.
MAX_CONTROL_FRAMES_PER_TICK = 256
MAX_STREAM_FRAMES_PER_TICK = 16


class RobotPort:
    """Links to one robot (slot `slot` of the batched session) plus its latest state."""

    def __init__(self, endpoint: str, slot: int, manifest, errors: ErrorTally, *, context=None, curve=None):
        self.endpoint, self.slot, self.manifest, self.errors = endpoint, slot, manifest, errors
        self.session = open_session_link(endpoint, bind=False, context=context, curve=curve)
        self.stream = open_stream_link(endpoint, bind=False, context=context, curve=curve)
        # The controller knows its dims before any SPEC: wrong-dimension OBS are rejected as
        # `dims` from the first frame on.
        for link in (self.session, self.stream):
            link.obs_dim, link.act_dim = manifest.obs_dim, manifest.act_dim
        self.enc = Encoder(act_dim=manifest.act_dim)
        self.spec: Spec | None = None
        self.bounds: tuple[np.ndarray, np.ndarray] | None = None  # set with each accepted SPEC
        self.hello_ns = 0  # when HELLO was last sent (0: never)
        self.spec_ns = 0  # when the current SPEC was accepted
        self.hellos = 0
        # Latest observation (a copy: the link's receive buffer is reused by the next frame).
        self.obs = np.zeros(manifest.obs_dim, np.float32)
        self.reward = 0.0
        self.obs_flags = 0
        self.obs_seq = self.obs_episode = self.obs_step = 0
        self.obs_ns = 0  # local receive time of the latest observation (0: none since SPEC)
        self.new_obs = False  # a new observation arrived in this tick's poll
        self.awaiting_reset = False  # the last OBS was terminal: nothing to answer until the next
        self.reset_pending = False  # the slot's policy state must be reset before its next step
        self._tick = 0  # the tick being polled, for the control log lines
        self.control = SessionControl(
            "controller", errors, log, where=self._where, cleared_means="policy state reset"
        )
        self.cleared = False  # CLEAR arrived in this tick's poll (the loop resets the slot)
        self.spec_changed = False  # a SPEC was accepted in this tick's poll
        self.left = False  # BYE arrived in this tick's poll
        self.dropped_obs = 0  # valid OBS overwritten by a newer one within one poll
        self.spec_mismatches = 0

    def _where(self) -> str:
        return f"tick {self._tick}: robot {self.endpoint} (slot {self.slot})"

    # ---- receiving -------------------------------------------------------------------------

    def poll(self, now_ns: int, tick: int) -> None:
        self.new_obs = self.cleared = self.spec_changed = self.left = False
        self._tick = tick
        self._drain_session(now_ns, tick)
        for msg in self.stream.pending(MAX_STREAM_FRAMES_PER_TICK, self.errors):
            if msg.type is not MsgType.OBS:
                self.errors.add(ProtocolError("unexpected", f"{msg.type.name} on the observation stream"))
            elif self.spec is None and not self._drain_session(now_ns, tick):
                # (the robot's SPEC may have landed on the session link after it was drained)
                self.errors.add(ProtocolError("unexpected", "OBS before the robot's SPEC"))
            else:
                self._take_obs(msg, now_ns)

    def _drain_session(self, now_ns: int, tick: int) -> bool:
        """Handle the pending control frames; True when a session with the robot is up."""
        for msg in self.session.pending(MAX_CONTROL_FRAMES_PER_TICK, self.errors):
            self._control(msg, now_ns, tick)
        return self.spec is not None

    def _take_obs(self, msg, now_ns: int) -> None:
        if self.new_obs:
            self.dropped_obs += 1
        # A new episode starts with a RESET OBS, but conflation may have replaced that OBS with
        # the next one: an episode number change, or the first OBS of a session, also resets.
        if msg.flags & _RESET or self.obs_ns == 0 or msg.episode != self.obs_episode:
            self.reset_pending = True
        self.obs[:] = msg.values[:-1]
        self.reward = float(msg.values[-1])
        self.obs_flags = msg.flags
        self.obs_seq, self.obs_episode, self.obs_step = msg.seq, msg.episode, msg.step
        self.obs_ns = now_ns
        self.new_obs = True
        self.awaiting_reset = bool(msg.flags & _DONE)  # a terminal OBS is not answered

    def _control(self, msg, now_ns: int, tick: int) -> None:
        if msg.type is MsgType.SPEC:
            self._accept_spec(msg.spec, tick, now_ns)
            return
        latched = self.control.estop
        if self.control.handle(msg) is Control.BYE:
            log.warning("tick %d: robot %s (slot %d) said BYE", tick, self.endpoint, self.slot)
            self.spec = None
            self.obs_ns = 0
            self.left = True
        elif latched and not self.control.estop:
            self.cleared = True

    def _accept_spec(self, spec: Spec, tick: int, now_ns: int) -> None:
        try:
            low, high = check_spec(spec, self.manifest, self.endpoint)
            if spec.num_envs != 1:
                raise SpecMismatchError(
                    f"robot at {self.endpoint} runs {spec.num_envs} environments; the real-time mode "
                    "takes one environment per robot endpoint (list several endpoints instead)"
                )
        except SpecMismatchError as exc:
            self.spec_mismatches += 1
            if self.spec_mismatches == 1:
                log.error("tick %d: %s; the robot stays unserved", tick, exc)
            self.session.send(self.enc.control(MsgType.BYE))
            self.spec = None
            return
        self.spec, self.bounds = spec, (low, high)
        self.spec_ns = now_ns
        self.obs_ns = 0  # the session's first OBS resets the slot
        self.awaiting_reset = False
        self.spec_changed = True
        log.info(
            "tick %d: robot %s (slot %d, %s) connected: obs_dim=%d act_dim=%d rate=%s",
            tick,
            self.endpoint,
            self.slot,
            spec.robot or "robot",
            spec.obs_dim,
            spec.act_dim,
            f"{spec.control_rate_hz:g} Hz" if spec.control_rate_hz else "none",
        )

    # ---- sending ---------------------------------------------------------------------------

    def maybe_hello(self, now_ns: int, retry_ns: int, silent_ns: int) -> None:
        """HELLO when the robot has no session with us, or its observations stopped for
        `silent_ns` (it may have restarted): at most once per `retry_ns`."""
        silent = self.spec is not None and now_ns - max(self.obs_ns, self.spec_ns) > silent_ns
        if (self.spec is None or silent) and now_ns - self.hello_ns >= retry_ns:
            self.hello_ns = now_ns
            if self.session.send(self.enc.control(MsgType.HELLO)):
                self.hellos += 1

    @property
    def live(self) -> bool:
        """Owed an action this tick: a session with an observation that is not terminal."""
        return self.spec is not None and self.obs_ns != 0 and not self.awaiting_reset

    def send_act(self, action, flags: int) -> bool:
        return self.stream.send(
            self.enc.act(action, ack=self.obs_seq, flags=flags, episode=self.obs_episode, step=self.obs_step)
        )

    def bye(self) -> None:
        self.session.send(self.enc.control(MsgType.BYE))

    def close(self, flush_ms: int = 0) -> None:
        """flush_ms > 0: give frames still queued (the final safe ACT, BYE) that long to leave;
        Link.close() alone drops them (LINGER 0)."""
        for link in (self.stream, self.session):
            link.close(flush_ms)
