"""The real-time controller: a fixed-rate loop that never waits for a robot.

Each tick, at its absolute deadline (policyrt/scheduler.py):

1. **receive** -- drain every robot's links without blocking (controllers/robot_port.py): the
   newest observation wins, older ones are dropped; control frames (SPEC, ESTOP, CLEAR, BYE) are
   handled; malformed frames are rejected and counted.
2. **infer** -- step the batched session once, slot i = robot i, when any robot is owed a policy
   action. A robot whose observation did not change since the last tick is stepped with the
   same observation again (sample-and-hold, like any sampled controller: the policy's time base
   is the controller's rate) and a reward of 0, so no reward is counted twice.
3. **filter** -- the SafetyChain (controllers/safety.py). A slot falls back when its newest
   observation is older than `stale_after_s`, when inference ended after the tick's deadline
   (the start of the next tick), when the action is non-finite, or while its e-stop is latched.
4. **send** -- one ACT per robot owed one, on the conflated stream link.

E-stops are per robot: an ESTOP on a robot's session link latches that slot's fallback (flagged
FALLBACK|ESTOP) until a CLEAR, and the CLEAR resets the slot's recurrent state, since the state
learned from observations before the stop describes a situation that no longer exists.

Thread-safety: `request_stop()` and `request_swap()` only set attributes that the loop reads at
the next tick boundary, so they are safe from other threads and from signal handlers.

Board-side module: standard library, numpy and pyzmq only, Python 3.10.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import zmq

from policyrt.controllers import rt_settings
from policyrt.controllers.robot_port import RobotPort
from policyrt.controllers.safety import DEADLINE, ESTOP, STALE, SafetyChain
from policyrt.controllers.settings import RealtimeConfig
from policyrt.protocol import ErrorTally
from policyrt.scheduler import TickScheduler
from policyrt.timing import StageTimes

log = logging.getLogger(__name__)

GC_EVERY_S = 10.0  # how often the loop collects cyclic garbage in a tick's slack (see run())

# How long the final safe ACT and BYE may take to leave at shutdown (a vanished robot costs this).
SHUTDOWN_FLUSH_MS = 300

STAGES = ("receive", "infer", "filter", "send", "tick")
# receive: tick start -> every link drained; infer: the session step (0 when not stepped);
# filter: the safety chain; send: ACTs handed to ZeroMQ; tick: tick start -> last ACT sent.


@dataclass(frozen=True)
class RealtimeResult:
    stop_reason: str  # "stopped" (request_stop) | "duration" | "interrupted"
    detail: str
    ticks: int
    duration_s: float
    counters: dict
    timing: dict[str, dict[str, float]]  # stage -> n/p50/p99/max/mean in microseconds
    jitter: dict[str, float]  # tick-start jitter n/p50/p99/max in microseconds
    stage_times: StageTimes | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {
            "stop_reason": self.stop_reason,
            "detail": self.detail,
            "ticks": self.ticks,
            "duration_s": self.duration_s,
            "counters": self.counters,
            "timing": self.timing,
            "jitter": self.jitter,
        }


class RealtimeController:
    """Drives `len(robots)` robots with one batched `session` at `config.rate_hz`."""

    def __init__(
        self,
        session,
        robots: list[str],
        config: RealtimeConfig,
        *,
        telemetry=None,
        recorder=None,
        curve=None,
        context: zmq.Context | None = None,
        episodes=None,
    ):
        """telemetry: controllers.telemetry.Telemetry; recorder: controllers.flight_recorder.
        FlightRecorder; episodes: controllers.episode_recorder.EpisodeRecorder (a dataset of what
        was seen and sent); curve: a CURVE client setup for the links (controllers.auth)."""
        if not robots:
            raise ValueError("at least one robot endpoint is needed")
        if len(set(robots)) != len(robots):
            raise ValueError(f"robot endpoints must be distinct (one controller per robot): {robots}")
        if session.batch_size != len(robots):
            raise ValueError(
                f"the session has batch size {session.batch_size} but {len(robots)} robots are listed: "
                f"load the bundle with batch_size={len(robots)}"
            )
        self.session, self.robots, self.config = session, list(robots), config
        self.telemetry, self.recorder, self.curve = telemetry, recorder, curve
        self.episode_recorder = episodes
        self._context = context
        self.on_tick: Callable[[int], None] | None = None
        manifest = session.manifest
        self.obs_dim, self.act_dim, self.batch = manifest.obs_dim, manifest.act_dim, len(robots)
        self.errors = ErrorTally(log, "real-time controller")
        low = _bound(manifest, "action_low", -np.inf, self.act_dim)
        high = _bound(manifest, "action_high", np.inf, self.act_dim)
        self.safety = SafetyChain(
            low, high, batch=self.batch, fallback=config.fallback, max_delta=config.max_delta
        )
        self.scheduler = TickScheduler(config.rate_hz, spin_us=config.spin_us)
        self.deadline_ns = int(config.deadline_s * 1e9) if config.deadline_s else self.scheduler.period_ns
        self.times = StageTimes(STAGES)
        b, n = self.batch, self.obs_dim
        self.obs = np.zeros((b, n), np.float32)
        self.rewards = np.zeros(b, np.float32)
        self.prev_action = np.zeros((b, self.act_dim), np.float32)  # zeros after a reset
        self.faults = np.zeros(b, np.uint8)
        self.active = np.zeros(b, bool)
        self.stepped = np.zeros(b, bool)
        self.reset_mask = np.zeros(b, bool)
        self.stale_ns = np.zeros(b, np.int64)
        self.ports: list[RobotPort] = []
        self.ticks = 0
        self.deadline_misses = 0
        self.repeated_obs = 0
        self.resets = 0
        self.terminal_obs = 0
        self.swaps = 0
        self.swaps_refused = 0
        self.infer_errors = 0
        self.previous_session = None  # the session a swap replaced; the caller closes it
        self._stop = False
        self._pending_session = None
        self._swap_lock = threading.Lock()
        self.stop_reason = ""

    # ---- the interface other threads use -----------------------------------------------------

    def request_stop(self) -> None:
        """Stop at the next tick boundary (safe from any thread and from signal handlers)."""
        self._stop = True

    def request_swap(self, new_session) -> None:
        """Replace the session at the next tick boundary; every slot's state starts fresh."""
        with self._swap_lock:
            self._pending_session = new_session

    @property
    def counters(self) -> dict:
        """A snapshot of every counter (built on request: not for the hot path)."""
        ports = self.ports
        rejected = dict(self.errors.counts)
        return {
            "ticks": self.ticks,
            "deadline_misses": self.deadline_misses,
            "skipped_ticks": self.scheduler.skipped,
            "overruns": self.scheduler.overruns,
            "fallbacks": {k: v for k, v in self.safety.counts.items() if k != "rate_limited"},
            "fallback_ticks": self.safety.fallback_ticks,
            "rate_limited": self.safety.counts["rate_limited"],
            "estops": sum(p.estops for p in ports),
            "estop_latched": [p.estop for p in ports],
            "rejected": rejected,
            "rejected_total": sum(rejected.values()),
            "dropped_obs": sum(p.dropped_obs for p in ports),
            "repeated_obs": self.repeated_obs,
            "resets": self.resets,
            "terminal_obs": self.terminal_obs,
            "hellos": sum(p.hellos for p in ports),
            "spec_mismatches": sum(p.spec_mismatches for p in ports),
            "robots_connected": sum(p.spec is not None for p in ports),
            "swaps": self.swaps,
            "swaps_refused": self.swaps_refused,
            "infer_errors": self.infer_errors,
        }

    # ---- the loop ---------------------------------------------------------------------------

    def run(self, stop_after_s: float | None = None) -> RealtimeResult:
        """Run until request_stop(), `stop_after_s` seconds, or Ctrl-C; then send every robot the
        safe action and BYE, and return what happened."""
        cfg = self.config
        for message in rt_settings.apply(cfg.sched_fifo_priority, cfg.cpu_affinity, cfg.lock_memory):
            log.info("%s", message)
        context = self._context or zmq.Context.instance()
        self.ports = [
            RobotPort(ep, i, self.session.manifest, self.errors, context=context, curve=self.curve)
            for i, ep in enumerate(self.robots)
        ]
        for port in self.ports:
            self._set_stale(port)
        try:
            self._warm_up()  # before any helper thread starts: a broken session fails here, alone
        except BaseException:
            for port in self.ports:
                port.close()
            raise
        if self.recorder is not None:
            self.recorder.bind(self)
        if self.episode_recorder is not None:
            self.episode_recorder.bind(self)
        if self.telemetry is not None:
            self.telemetry.start(self)
        sched = self.scheduler
        limit_ticks = None if stop_after_s is None else max(1, int(round(stop_after_s * cfg.rate_hz)))
        reason, detail = "stopped", "request_stop() was called"
        gc.collect()
        gc.freeze()  # everything alive now lives for the whole run: keep collections off it
        # No automatic collections during the run: the loop's garbage is freed by reference counting
        # (no cycles on the tick path), and an automatic collection is a pause at a random tick. The
        # other threads (telemetry, reload, logging) may leave cycles, which a daemon running for
        # weeks must not accumulate: every GC_EVERY_S a collection runs right after a tick that
        # left more than half a period of slack (the frozen objects are not traversed, so it is short).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        gc_every = max(1, int(GC_EVERY_S * cfg.rate_hz))
        next_gc = gc_every
        sched.start()
        try:
            while not self._stop:
                tick = sched.wait()
                if limit_ticks is not None and tick >= limit_ticks:
                    reason, detail = "duration", f"ran the requested {stop_after_s:g} s"
                    break
                self._tick(tick)
                if tick >= next_gc and sched.due(tick + 1) - sched._clock() > sched.period_ns // 2:
                    gc.collect()
                    next_gc = tick + gc_every
        except KeyboardInterrupt:
            reason, detail = "interrupted", "Ctrl-C"
        finally:
            if gc_was_enabled:
                gc.enable()
            gc.unfreeze()
            self._shutdown()
        self.stop_reason = reason
        log.info("real-time controller stopped after %d ticks: %s", self.ticks, detail)
        return RealtimeResult(
            stop_reason=reason,
            detail=detail,
            ticks=self.ticks,
            duration_s=round(self.ticks / cfg.rate_hz, 3),
            counters=self.counters,
            timing=self.times.summary(),
            jitter=sched.jitter_summary(),
            stage_times=self.times,
        )

    def _tick(self, tick: int) -> None:
        clock = self.scheduler._clock
        t_start = clock()
        if self._pending_session is not None:
            self._swap(tick)
        if self.on_tick is not None:
            self.on_tick(tick)
        ports, faults, active, stepped = self.ports, self.faults, self.active, self.stepped
        retry_ns = int(self.config.hello_retry_s * 1e9)
        silent_ns = int(self.config.reconnect_after_s * 1e9)
        reset = self.reset_mask
        reset[:] = False
        for i, port in enumerate(ports):
            port.poll(t_start, tick)
            if port.spec_changed:
                self.safety.set_bounds(i, *port.bounds)
                self._set_stale(port)
            port.maybe_hello(t_start, retry_ns, silent_ns)
            live = port.live
            active[i] = live
            if port.new_obs and port.awaiting_reset:
                self.terminal_obs += 1  # an episode ended (its terminal OBS is not answered)
            fault = ESTOP if port.estop else 0
            if live:
                if port.new_obs:
                    self.obs[i] = port.obs
                    self.rewards[i] = port.reward
                    if port.reset_pending:
                        port.reset_pending = False
                        reset[i] = True
                else:
                    self.rewards[i] = 0.0  # the same observation again: its reward was counted
                    self.repeated_obs += 1
                if t_start - port.obs_ns > self.stale_ns[i]:
                    fault |= STALE
            if port.cleared:
                reset[i] = True  # CLEAR: the state from before the e-stop is not trusted
            faults[i] = fault
        t_recv = clock()

        if reset.any():
            self.resets += int(reset.sum())
            self.session.reset(reset)
            self.prev_action[reset] = 0.0
        np.logical_and(active, faults == 0, out=stepped)
        raw = None
        if stepped.any():
            try:
                raw = self.session.step(self.obs, self.rewards, prev_action=self.prev_action)
            except Exception as exc:  # a broken backend must not take the robots' safe action away
                self.infer_errors += 1
                if self.infer_errors == 1:
                    log.error("tick %d: inference failed (%s); sending the fallback action", tick, exc)
        t_infer = clock()
        if t_infer - self.scheduler.due(tick) > self.deadline_ns and stepped.any():
            self.deadline_misses += 1
            faults[stepped] |= DEADLINE
            if self.recorder is not None:
                self.recorder.deadline_miss(tick)
        out = self.safety.filter(raw, faults, tick, active)
        flags = self.safety.flags
        t_filter = clock()

        for i, port in enumerate(ports):
            if active[i]:
                port.send_act(out[i], int(flags[i]))
        self.prev_action[active] = out[active]
        t_sent = clock()

        self.ticks += 1
        self.times.record(
            t_recv - t_start, t_infer - t_recv, t_filter - t_infer, t_sent - t_filter, t_sent - t_start
        )
        if self.recorder is not None:
            self.recorder.record(tick, t_start, self, raw)
        if self.episode_recorder is not None:
            self.episode_recorder.record(self, raw, reset)

    def _warm_up(self) -> None:
        for _ in range(self.config.warmup_steps):
            self.session.step(self.obs, self.rewards, prev_action=self.prev_action)
        if self.config.warmup_steps:
            self.session.reset()

    def _swap(self, tick: int) -> None:
        with self._swap_lock:
            new, self._pending_session = self._pending_session, None
        m, old = new.manifest, self.session.manifest
        if (m.obs_dim, m.act_dim, new.batch_size) != (old.obs_dim, old.act_dim, self.batch):
            self.swaps_refused += 1
            log.error(
                "tick %d: refused the new session: obs_dim=%d act_dim=%d batch=%d, the running one has "
                "obs_dim=%d act_dim=%d batch=%d; keeping the running session",
                tick,
                m.obs_dim,
                m.act_dim,
                new.batch_size,
                old.obs_dim,
                old.act_dim,
                self.batch,
            )
            return
        self.previous_session, self.session = self.session, new
        new.reset()
        self.prev_action[:] = 0.0
        self.swaps += 1
        log.info("tick %d: swapped in the new session; every slot's state starts fresh", tick)

    def _set_stale(self, port: RobotPort) -> None:
        if self.config.stale_after_s is not None:
            self.stale_ns[port.slot] = int(self.config.stale_after_s * 1e9)
            return
        period = 1.0 / self.config.rate_hz
        robot_rate = port.spec.control_rate_hz if port.spec is not None else None
        if robot_rate:
            period = max(period, 1.0 / robot_rate)
        self.stale_ns[port.slot] = int(3 * period * 1e9)

    def _shutdown(self) -> None:
        """Say goodbye safely: the safe action (zero or the configured one, not 'hold': the
        controller is going away) flagged FALLBACK to every robot with a session, repeated on
        the tick grid for `_goodbye_ticks()`, then BYE, then close.

        Repeated, not sent once: on a conflated link the frame still queued when the connection
        closes is replaced by the close itself, so a single last ACT that the robot had not read
        yet would be lost. A robot reads its stream at least once per control period, so a few
        of its periods of safe ACTs are certain to reach it."""
        from policyrt.controllers.safety import ACT_ESTOP, ACT_FALLBACK

        try:
            for _ in range(self._goodbye_ticks() if self.ports else 0):
                self.scheduler.wait()
                for i, port in enumerate(self.ports):
                    if port.spec is not None:
                        port.send_act(self.safety.safe[i], ACT_FALLBACK | (ACT_ESTOP if port.estop else 0))
        except KeyboardInterrupt:
            pass
        for port in self.ports:
            if port.spec is not None:
                port.bye()
        if self.episode_recorder is not None:
            try:
                self.episode_recorder.close()
            except Exception as exc:  # a full disk must not keep the controller from closing cleanly
                log.error("episode recorder: could not write the dataset: %s", exc)
        if self.telemetry is not None:
            self.telemetry.stop()
        if self.recorder is not None:
            self.recorder.close()
        for port in self.ports:
            port.close(flush_ms=SHUTDOWN_FLUSH_MS)

    def _goodbye_ticks(self) -> int:
        """Ticks of safe ACTs before BYE: two periods of the slowest robot, at least 50 ms, at
        most 0.5 s."""
        periods = [
            1.0 / p.spec.control_rate_hz for p in self.ports if p.spec is not None and p.spec.control_rate_hz
        ]
        seconds = min(0.5, max([0.05, *(2 * t for t in periods)]))
        return max(3, math.ceil(seconds * self.config.rate_hz))


def _bound(manifest, name: str, default: float, dim: int) -> np.ndarray:
    value = getattr(manifest, name, None)
    return np.full(dim, default, np.float32) if value is None else np.asarray(value, np.float32)


def format_result(result: RealtimeResult) -> str:
    """End-of-run report: why it stopped, deadline misses, fallbacks, rejected frames, latencies."""
    from policyrt.timing import format_table

    c = result.counters
    ticks = max(1, result.ticks)
    lines = [
        f"stopped: {result.stop_reason} ({result.detail}); {result.ticks} ticks in {result.duration_s:g} s",
        f"deadline misses: {c['deadline_misses']} ({100.0 * c['deadline_misses'] / ticks:.2f}%), "
        f"skipped ticks: {c['skipped_ticks']}",
        "fallbacks: "
        + (", ".join(f"{k}={v}" for k, v in c["fallbacks"].items() if v) or "none")
        + f"; rate-limited: {c['rate_limited']}; e-stops: {c['estops']}",
        "rejected frames: " + (", ".join(f"{k}={v}" for k, v in sorted(c["rejected"].items())) or "none"),
    ]
    j = result.jitter
    if j:
        lines.append(
            f"tick-start jitter: p50 {j['p50_us']:.1f} us, p99 {j['p99_us']:.1f} us, max {j['max_us']:.1f} us"
        )
    lines.append(format_table(result.timing))
    return "\n".join(lines)
