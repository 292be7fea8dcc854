"""Flight recorder: the last N ticks of a real-time controller, written to disk when it matters.

Every tick copies its observation, the policy's raw action, the action sent, the ACT flags, the
fault bits, the rows whose policy state was reset after a non-finite action, and the stage timings from the controller's tick record (controllers/core.py) into ring
buffers allocated once (`on_start`), so recording costs a handful of small copies and allocates
nothing. A dump is requested

- by a fault: an e-stop latching, a non-finite policy output (its row's state is reset), an
  observation outside the bundle's recorded range, or a burst of deadline misses
  (`miss_burst` misses within `miss_window` ticks). The dump waits `post_ticks` more ticks, so
  the file shows what happened after the fault as well as before; automatic dumps are at most one
  per half ring, so a policy that emits NaN on every other tick cannot fill the disk;
- an e-stop latch always gets a dump of its own: it is the operator's (or the robot's) event,
  not the policy's, and must never be lost. A dump still pending for another fault is written at
  once (it shows that fault and what followed up to the e-stop); e-stop dumps have their own
  once-per-half-ring limit, and a latch within it is dumped later instead of never (the ring
  still holds it then); a latch while an e-stop dump is pending is in that dump;
- by SIGUSR1: the handler only sets a flag (nothing else is safe in a signal handler); the next
  tick dumps;
- at close (only when a request is still pending).

The tick itself only copies the rings in order (microseconds); compressing and writing the .npz
happens on a writer thread, off the control loop. File format: docs/SAFETY.md, "Flight recorder".

Board-side module: standard library and numpy only, Python 3.10.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import threading
import time
from pathlib import Path

import numpy as np

from policyrt.controllers.safety import ESTOP, NONFINITE, OBS_RANGE, REASONS

_ESTOP_REASON = REASONS[ESTOP]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class FlightRecorder:
    def __init__(
        self,
        out_dir,
        capacity: int = 2048,
        *,
        post_ticks: int | None = None,
        miss_burst: int = 5,
        miss_window: int = 100,
    ):
        if capacity < 8:
            raise ValueError(f"flight recorder capacity must be >= 8 ticks, got {capacity}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity
        self.post_ticks = capacity // 8 if post_ticks is None else post_ticks
        self.miss_burst, self.miss_window = miss_burst, miss_window
        self._misses = np.full(max(1, miss_burst), -(1 << 62), np.int64)  # ticks of the latest misses
        self._miss_count = 0
        self.count = 0
        self.dumps: list[Path] = []  # files written so far
        self._pending: tuple[str, int] | None = None  # (reason, tick to dump at)
        self._signalled = False
        self._last_auto_dump = -(1 << 62)
        self._last_estop_dump = -(1 << 62)  # the tick the latest e-stop dump was due at
        self._queue: queue.Queue = queue.Queue()
        self._writer: threading.Thread | None = None
        self._run = None  # the controller's RunInfo, from on_start

    # ---- setup -------------------------------------------------------------------------------

    def on_start(self, run, record) -> None:
        """Allocate the rings for the run's dims and batch (run: controllers.core.RunInfo)."""
        n, b = self.capacity, run.batch
        self._run = run
        self.tick = np.full(n, -1, np.int64)
        self.t_ns = np.zeros(n, np.int64)
        self.obs = np.zeros((n, b, run.obs_dim), np.float32)
        self.raw = np.zeros((n, b, run.act_dim), np.float32)
        self.action = np.zeros((n, b, run.act_dim), np.float32)
        self.flags = np.zeros((n, b), np.uint32)
        self.faults = np.zeros((n, b), np.uint8)
        self.active = np.zeros((n, b), bool)
        self.state_reset = np.zeros((n, b), bool)
        self.stages = np.zeros((n, len(run.stages)), np.int64)
        self._stage_names = run.stages
        self._writer = threading.Thread(target=self._write_loop, name="flight-recorder", daemon=True)
        self._writer.start()

    def install_signal(self, signum: int = signal.SIGUSR1) -> None:
        """Dump on SIGUSR1 (main thread only, as Python requires for signal handlers)."""
        signal.signal(signum, self._on_signal)

    def _on_signal(self, *_):
        self._signalled = True

    def request_dump(self, reason: str = "request") -> None:
        """Thread-safe: dump at the next tick."""
        self._signalled = reason or True

    # ---- the hot path ------------------------------------------------------------------------

    def _deadline_miss(self, tick: int) -> None:
        self._misses[self._miss_count % len(self._misses)] = tick
        self._miss_count += 1
        oldest = self._misses[self._miss_count % len(self._misses)]
        if self._miss_count >= self.miss_burst and tick - oldest < self.miss_window:
            self._fault("deadline_burst", tick)

    def on_tick(self, record) -> None:
        tick = record.tick
        if record.deadline_missed:
            self._deadline_miss(tick)
        i = self.count % self.capacity
        self.tick[i] = tick
        self.t_ns[i] = record.t_start_ns
        self.obs[i] = record.obs
        if record.stepped:
            self.raw[i] = record.raw
        else:
            self.raw[i] = np.nan
        self.action[i] = record.actions
        self.flags[i] = record.act_flags
        self.faults[i] = record.faults
        self.active[i] = record.live
        self.state_reset[i] = record.state_reset
        self.stages[i] = record.stage_ns
        self.count += 1
        onsets = record.fault_onsets
        if onsets & ESTOP:
            self._estop(tick)
        elif onsets & NONFINITE:
            self._fault(REASONS[NONFINITE], tick)
        elif onsets & OBS_RANGE:
            self._fault(REASONS[OBS_RANGE], tick)
        if self._signalled:
            reason = self._signalled if isinstance(self._signalled, str) else "sigusr1"
            self._signalled = False
            self._dump(reason, tick)
        elif self._pending is not None and tick >= self._pending[1]:
            reason, _ = self._pending
            self._pending = None
            self._dump(reason, tick)

    def _fault(self, reason: str, tick: int) -> None:
        if self._pending is not None or tick - self._last_auto_dump < self.capacity // 2:
            return
        self._last_auto_dump = tick
        self._pending = (reason, tick + self.post_ticks)
        log.warning("tick %d: %s: flight recorder dump in %d ticks", tick, reason, self.post_ticks)

    def _estop(self, tick: int) -> None:
        """Schedule the e-stop's own dump (see the module docstring: never dropped)."""
        pending = self._pending
        if pending is not None and pending[0] == _ESTOP_REASON:
            return  # that dump is written after this tick, so it shows this latch too
        if pending is not None:  # another fault's dump: written now, the e-stop gets its own
            self._pending = None
            self._dump(pending[0], tick)
        # Deferred, not dropped, within the limit: the ring (a whole capacity) still holds `tick`.
        due = max(tick + self.post_ticks, self._last_estop_dump + self.capacity // 2)
        self._last_estop_dump = due
        self._pending = (_ESTOP_REASON, due)
        log.warning("tick %d: %s: flight recorder dump in %d ticks", tick, _ESTOP_REASON, due - tick)

    def _dump(self, reason: str, tick: int) -> None:
        """Copy the rings oldest-first (fast) and hand the copy to the writer thread."""
        n = min(self.count, self.capacity)
        order = (np.arange(n) + (self.count - n)) % self.capacity
        run = self._run
        arrays = {
            "tick": self.tick[order],
            "t_ns": self.t_ns[order],
            "obs": self.obs[order],
            "raw_action": self.raw[order],
            "action": self.action[order],
            "act_flags": self.flags[order],
            "faults": self.faults[order],
            "active": self.active[order],
            "state_reset": self.state_reset[order],
            "stage_ns": self.stages[order],
            "events": run.fault_events(),
        }
        meta = {
            "format_version": FORMAT_VERSION,
            "reason": reason,
            "tick": int(tick),
            "wall_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "rate_hz": run.rate_hz,
            "robots": list(run.robots),
            "stages": list(self._stage_names),
            "fault_bits": {str(bit): name for bit, name in REASONS.items()},
            "counters": run.counters(),
        }
        self._queue.put((reason, tick, arrays, meta))

    # ---- off the hot path --------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            reason, tick, arrays, meta = item
            path = self.out_dir / f"flight-{time.strftime('%Y%m%d-%H%M%S')}-tick{tick}-{reason}.npz"
            try:
                with open(path, "wb") as f:
                    np.savez_compressed(f, meta=np.array(json.dumps(meta)), **arrays)
            except OSError as exc:
                log.error("flight recorder: could not write %s: %s", path, exc)
                continue
            self.dumps.append(path)
            log.warning("flight recorder: wrote %s (%d ticks, %s)", path, len(arrays["tick"]), reason)

    def on_close(self) -> None:
        """Write a still-pending dump, then wait for the writer."""
        if self._run is None:
            return
        if self._pending is not None or self._signalled:
            reason = self._pending[0] if self._pending else "sigusr1"
            self._pending = None
            self._signalled = False
            self._dump(reason, self.tick[(self.count - 1) % self.capacity] if self.count else 0)
        self._queue.put(None)
        if self._writer is not None:
            self._writer.join()


def load_dump(path) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of a flight recorder file."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "meta"}
        meta = json.loads(str(data["meta"]))
    return meta, arrays
