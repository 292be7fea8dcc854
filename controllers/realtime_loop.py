"""The real-time controller: a fixed-rate loop that never waits for a robot.

Each tick, at its absolute deadline (policyrt/scheduler.py):

1. **receive** -- drain every robot's links without blocking (controllers/robot_port.py): the
   newest observation wins, older ones are dropped; control frames (SPEC, ESTOP, CLEAR, BYE) are
   handled; malformed frames are rejected and counted.
2. **infer** -- step the batched session once, slot i = robot i, when any robot is owed a policy
   action. A robot whose observation did not change since the last tick is stepped with the
   same observation again (sample-and-hold, like any sampled controller: the policy's time base
   is the controller's rate) and a reward of 0, so no reward is counted twice.
3. **filter** -- the SafetyChain (controllers/safety.py). A slot falls back on an observation
   older than `stale_after_s` or outside the bundle's range (`obs_range_factor`), an inference
   past the deadline (the next tick's start), a non-finite action (state reset), or an e-stop.
4. **send** -- one ACT per robot owed one, on the conflated stream link.

Steps 2 and 3 are the control core's tick (controllers/core.py), the same as lockstep's. A
session step that raises is a fallback tick (`infer_errors`); at the warm-up (`warm_up()`, which
controllers/build.py calls) it raises the core's InferenceFailed, before any robot is contacted. Observers
(flight recorder, episode recorder, telemetry) get the core's tick record after each tick.

E-stops are per robot: an ESTOP on a robot's session link latches that slot's fallback (flagged
FALLBACK|ESTOP) until a CLEAR, and the CLEAR resets the slot's recurrent state, since the state
learned from observations before the stop describes a situation that no longer exists.

Stopping: the loop reads its StopRequest (policyrt.stopping.STOP: SIGINT, SIGTERM) at every tick
boundary and ends "interrupted"; `request_stop()` (programmatic: tests, an embedding program)
ends it "stopped". Either way every robot gets the safe action, then BYE.

Thread-safety: `request_stop()` and `request_swap()` only set attributes that the loop reads at
the next tick boundary, so they are safe from other threads and from signal handlers.

Board-side module: standard library, numpy and pyzmq only, Python 3.10.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
from collections.abc import Callable, Sequence

import zmq

from policyrt.controllers import rt_settings
from policyrt.controllers.core import ControlCore, RunInfo, manifest_bounds
from policyrt.controllers.results import RealtimeResult
from policyrt.controllers.robot_port import RobotPort
from policyrt.controllers.safety import ACT_ESTOP, ACT_FALLBACK, ESTOP, STALE, SafetyChain
from policyrt.controllers.settings import RealtimeConfig
from policyrt.protocol import ErrorTally
from policyrt.scheduler import TickScheduler
from policyrt.stopping import STOP, StopRequest
from policyrt.timing import StageTimes

log = logging.getLogger(__name__)

GC_EVERY_S = 10.0  # how often the loop collects cyclic garbage in a tick's slack (see run())

# How long the final safe ACT and BYE may take to leave at shutdown (a vanished robot costs this).
SHUTDOWN_FLUSH_MS = 300

STAGES = ("receive", "infer", "filter", "send", "tick")
# receive: tick start -> every link drained; infer: the session step (0 when not stepped);
# filter: the safety chain; send: ACTs handed to ZeroMQ; tick: tick start -> last ACT sent.


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
        observers: Sequence = (),
        stop: StopRequest = STOP,
    ):
        """telemetry: controllers.telemetry.Telemetry; recorder: controllers.flight_recorder.
        FlightRecorder; episodes: controllers.episode_recorder.EpisodeRecorder (a dataset of what
        was seen and sent); observers: any others (controllers.core.Observer). curve: a CURVE
        client setup for the links (controllers.auth)."""
        if not robots:
            raise ValueError("at least one robot endpoint is needed")
        if len(set(robots)) != len(robots):
            raise ValueError(f"robot endpoints must be distinct (one controller per robot): {robots}")
        if session.batch_size != len(robots):
            raise ValueError(
                f"the session has batch size {session.batch_size} but {len(robots)} robots are listed: "
                f"load the bundle with batch_size={len(robots)}"
            )
        self.robots, self.config, self.curve, self.stop = list(robots), config, curve, stop
        self.telemetry, self.recorder, self.episode_recorder = telemetry, recorder, episodes
        self.observers = [o for o in (recorder, episodes, telemetry, *observers) if o is not None]
        self._context = context
        self.on_tick: Callable[[int], None] | None = None  # called at each tick's start (the daemon's watchdog)
        manifest = session.manifest
        self.obs_dim, self.act_dim, self.batch = manifest.obs_dim, manifest.act_dim, len(robots)
        self.errors = ErrorTally(log, "real-time controller")
        low, high = manifest_bounds(manifest)
        self.safety = SafetyChain(low, high, batch=self.batch, fallback=config.fallback, max_delta=config.max_delta)
        self.core = ControlCore(session, self.safety, STAGES, contain_errors=True,
                                obs_range_factor=config.obs_range_factor)
        self._warmed_up = False
        self.record = self.core.record
        self.scheduler = TickScheduler(config.rate_hz, spin_us=config.spin_us)
        self.deadline_ns = int(config.deadline_s * 1e9) if config.deadline_s else self.scheduler.period_ns
        self.times = StageTimes(STAGES)
        self.stale_ns = [0] * self.batch
        self.ports: list[RobotPort] = []
        self.ticks = 0
        self.repeated_obs = 0
        self.terminal_obs = 0
        self.swaps = 0
        self.swaps_refused = 0
        self.previous_session = None  # the session a swap replaced; the caller closes it
        self._stop = False
        self._pending_session = None
        self._swap_lock = threading.Lock()
        self.stop_reason = ""

    @property
    def session(self):
        return self.core.session

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
        ports, core = self.ports, self.core
        rejected = dict(self.errors.counts)
        return {
            "ticks": self.ticks,
            "deadline_misses": core.deadline_misses,
            "skipped_ticks": self.scheduler.skipped,
            "overruns": self.scheduler.overruns,
            "fallbacks": {k: v for k, v in self.safety.counts.items() if k != "rate_limited"},
            "fallback_ticks": self.safety.fallback_ticks,
            "rate_limited": self.safety.counts["rate_limited"],
            "estops": sum(p.control.estops for p in ports),
            "estop_latched": [p.control.estop for p in ports],
            "rejected": rejected,
            "rejected_total": sum(rejected.values()),
            "dropped_obs": sum(p.dropped_obs for p in ports),
            "repeated_obs": self.repeated_obs,
            "resets": core.resets,
            "state_resets": core.state_resets,
            "terminal_obs": self.terminal_obs,
            "hellos": sum(p.hellos for p in ports),
            "spec_mismatches": sum(p.spec_mismatches for p in ports),
            "robots_connected": sum(p.spec is not None for p in ports),
            "swaps": self.swaps,
            "swaps_refused": self.swaps_refused,
            "infer_errors": core.infer_errors,
        }

    def run_info(self) -> RunInfo:
        return RunInfo(
            rate_hz=self.config.rate_hz,
            robots=tuple(self.robots),
            batch=self.batch,
            obs_dim=self.obs_dim,
            act_dim=self.act_dim,
            stages=STAGES,
            action_low=self.safety.low,
            action_high=self.safety.high,
            counters=lambda: self.counters,
            fault_events=self.safety.recent_events,
            robot_names=lambda: [p.spec.robot for p in self.ports if p.spec is not None],
        )

    # ---- the loop ---------------------------------------------------------------------------

    def warm_up(self) -> None:
        """The core's warm-up, once (run() calls it; the builder earlier): a session that cannot
        step fails here (InferenceFailed), before any robot or helper thread exists."""
        if not self._warmed_up:
            self.core.warm_up(self.config.warmup_steps)
            self._warmed_up = True

    def run(self, stop_after_s: float | None = None) -> RealtimeResult:
        """Run until the stop request, request_stop(), or `stop_after_s` seconds; then send every
        robot the safe action and BYE, and return what happened."""
        cfg = self.config
        for message in rt_settings.apply(cfg.sched_fifo_priority, cfg.cpu_affinity, cfg.lock_memory):
            log.info("%s", message)
        self.warm_up()
        context = self._context or zmq.Context.instance()
        self.ports = [
            RobotPort(ep, i, self.session.manifest, self.errors, context=context, curve=self.curve)
            for i, ep in enumerate(self.robots)
        ]
        for port in self.ports:
            self._set_stale(port)
        info = self.run_info()
        for observer in self.observers:
            observer.on_start(info, self.record)
        sched, stop = self.scheduler, self.stop
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
        clock = sched.clock
        sched.start()
        try:
            while True:
                tick = sched.wait()
                if stop.requested:  # SIGINT, SIGTERM, stop.request(): read here, every tick
                    reason, detail = "interrupted", f"stopped by {stop.reason}"
                    break
                if self._stop:
                    break
                if limit_ticks is not None and tick >= limit_ticks:
                    reason, detail = "duration", f"ran the requested {stop_after_s:g} s"
                    break
                self._tick(tick)
                if tick >= next_gc and sched.due(tick + 1) - clock() > sched.period_ns // 2:
                    gc.collect()
                    next_gc = tick + gc_every
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
        sched = self.scheduler
        clock = sched.clock
        t_start = clock()
        if self._pending_session is not None:
            self._swap(tick)
        if self.on_tick is not None:
            self.on_tick(tick)
        rec = self.record
        rec.tick, rec.t_start_ns = tick, t_start
        faulted, run_policy, reset_any = self._receive(tick, t_start)
        t_recv = clock()

        core = self.core
        out = core.tick(reset_any=reset_any, run_policy=run_policy, faulted=faulted,
                        deadline_ns=sched.due(tick) + self.deadline_ns, clock=clock)
        flags, live = rec.act_flags, rec.live
        for i, port in enumerate(self.ports):
            if live[i]:
                port.send_act(out[i], int(flags[i]))
        t_sent = clock()

        self.ticks += 1
        t_infer, t_filter = core.t_infer, core.t_filter
        self.times.record(
            t_recv - t_start, t_infer - t_recv, t_filter - t_infer, t_sent - t_filter, t_sent - t_start
        )
        if self.observers:
            stage = rec.stage_ns
            stage[0], stage[1], stage[2] = t_recv - t_start, t_infer - t_recv, t_filter - t_infer
            stage[3], stage[4] = t_sent - t_filter, t_sent - t_start
            rec.jitter_ns = t_start - sched.due(tick)
            for observer in self.observers:
                observer.on_tick(rec)

    def _receive(self, tick: int, t_start: int) -> tuple[bool, bool, bool]:
        """Drain every robot into the record's rows; returns (a fault was found, some row is owed
        the policy's action, some row resets)."""
        rec = self.record
        obs, rewards, reset, live, faults = rec.obs, rec.rewards, rec.reset, rec.live, rec.faults
        new_obs, obs_flags, connected = rec.new_obs, rec.obs_flags, rec.connected
        retry_ns = int(self.config.hello_retry_s * 1e9)
        silent_ns = int(self.config.reconnect_after_s * 1e9)
        faulted = run_policy = reset_any = False
        for i, port in enumerate(self.ports):
            port.poll(t_start, tick)
            if port.spec_changed:
                self.safety.set_bounds(i, *port.bounds)
                self._set_stale(port)
            port.maybe_hello(t_start, retry_ns, silent_ns)
            is_live, fresh = port.live, port.new_obs
            live[i], new_obs[i], connected[i] = is_live, fresh, port.spec is not None
            row_reset = port.cleared  # CLEAR: the state from before the e-stop is not trusted
            fault = ESTOP if port.control.estop else 0
            if fresh:
                obs[i] = port.obs
                rewards[i] = port.reward
                obs_flags[i] = port.obs_flags
                if port.awaiting_reset:
                    self.terminal_obs += 1  # an episode ended (its terminal OBS gets no ACT here)
            if is_live:
                if not fresh:
                    rewards[i] = 0.0  # the same observation again: its reward was counted
                    self.repeated_obs += 1
                elif port.reset_pending:
                    port.reset_pending = False
                    row_reset = True
                if t_start - port.obs_ns > self.stale_ns[i]:
                    fault |= STALE
                if not fault:
                    run_policy = True
            reset[i] = row_reset
            reset_any |= row_reset
            faults[i] = fault
            if fault:
                faulted = True
        return faulted, run_policy, reset_any

    def _swap(self, tick: int) -> None:
        with self._swap_lock:
            new, self._pending_session = self._pending_session, None
        m, old = new.manifest, self.session.manifest
        if (m.obs_dim, m.act_dim, new.batch_size) != (old.obs_dim, old.act_dim, self.batch):
            self.swaps_refused += 1
            log.error(
                "tick %d: refused the new session: obs_dim=%d act_dim=%d batch=%d, the running one has "
                "obs_dim=%d act_dim=%d batch=%d; keeping the running session",
                tick, m.obs_dim, m.act_dim, new.batch_size, old.obs_dim, old.act_dim, self.batch,
            )
            return
        self.previous_session = self.session
        self.core.replace_session(new)
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
        for _ in range(self._goodbye_ticks() if self.ports else 0):
            self.scheduler.wait()
            for i, port in enumerate(self.ports):
                if port.spec is not None:
                    port.send_act(self.safety.safe[i], ACT_FALLBACK | (ACT_ESTOP if port.control.estop else 0))
        for port in self.ports:
            if port.spec is not None:
                port.bye()
        for observer in self.observers:
            try:
                observer.on_close()
            except Exception as exc:  # a full disk must not keep the controller from closing cleanly
                log.error("%s: could not finish: %s", type(observer).__name__, exc)
        for port in self.ports:
            port.close(flush_ms=SHUTDOWN_FLUSH_MS)

    def _goodbye_ticks(self) -> int:
        """Ticks of safe ACTs before BYE: two periods of the slowest robot, 50 ms to 0.5 s."""
        periods = [
            1.0 / p.spec.control_rate_hz for p in self.ports if p.spec is not None and p.spec.control_rate_hz
        ]
        seconds = min(0.5, max([0.05, *(2 * t for t in periods)]))
        return max(3, math.ceil(seconds * self.config.rate_hz))
