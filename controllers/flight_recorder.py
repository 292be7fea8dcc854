"""Flight recorder: the last N ticks of a real-time controller, written to disk when it matters.

Every tick copies its observation, the policy's raw action, the action sent, the ACT flags, the
fault bits and the stage timings into ring buffers allocated once (`bind`), so recording costs a
handful of small copies and allocates nothing. A dump is requested

- by a fault: an e-stop latching, a non-finite policy output, or a burst of deadline misses
  (`miss_burst` misses within `miss_window` ticks). The dump waits `post_ticks` more ticks, so
  the file shows what happened after the fault as well as before; automatic dumps are at most one
  per half ring, so a policy that emits NaN on every other tick cannot fill the disk;
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

from policyrt.controllers.safety import ESTOP, NONFINITE, REASONS

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
        self._seen_events = 0
        self._queue: queue.Queue = queue.Queue()
        self._writer: threading.Thread | None = None
        self._controller = None

    # ---- setup -------------------------------------------------------------------------------

    def bind(self, controller) -> None:
        """Allocate the rings for the controller's dims and batch; called by run()."""
        n, b = self.capacity, controller.batch
        self._controller = controller
        self.tick = np.full(n, -1, np.int64)
        self.t_ns = np.zeros(n, np.int64)
        self.obs = np.zeros((n, b, controller.obs_dim), np.float32)
        self.raw = np.zeros((n, b, controller.act_dim), np.float32)
        self.action = np.zeros((n, b, controller.act_dim), np.float32)
        self.flags = np.zeros((n, b), np.uint32)
        self.faults = np.zeros((n, b), np.uint8)
        self.active = np.zeros((n, b), bool)
        self.stages = np.zeros((n, len(controller.times.stages)), np.int64)
        self._stage_names = controller.times.stages
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

    def deadline_miss(self, tick: int) -> None:
        self._misses[self._miss_count % len(self._misses)] = tick
        self._miss_count += 1
        oldest = self._misses[self._miss_count % len(self._misses)]
        if self._miss_count >= self.miss_burst and tick - oldest < self.miss_window:
            self._fault("deadline_burst", tick)

    def record(self, tick: int, t_start_ns: int, controller, raw) -> None:
        i = self.count % self.capacity
        self.tick[i] = tick
        self.t_ns[i] = t_start_ns
        self.obs[i] = controller.obs
        if raw is None:
            self.raw[i] = np.nan
        else:
            self.raw[i] = raw
        self.action[i] = controller.safety.out
        self.flags[i] = controller.safety.flags
        self.faults[i] = controller.faults
        self.active[i] = controller.active
        times = controller.times
        self.stages[i] = times._ns[(times.count - 1) % len(times._ns)]
        self.count += 1
        safety = controller.safety
        if safety.event_count != self._seen_events:
            self._check_events(safety, tick)
        if self._signalled:
            reason = self._signalled if isinstance(self._signalled, str) else "sigusr1"
            self._signalled = False
            self._dump(reason, tick)
        elif self._pending is not None and tick >= self._pending[1]:
            reason, _ = self._pending
            self._pending = None
            self._dump(reason, tick)

    def _check_events(self, safety, tick: int) -> None:
        new = min(safety.event_count - self._seen_events, len(safety.events))
        self._seen_events = safety.event_count
        for k in range(new):
            _, _, bit, began = safety.events[(safety.event_count - 1 - k) % len(safety.events)]
            if began and bit in (ESTOP, NONFINITE):
                self._fault(REASONS[int(bit)], tick)

    def _fault(self, reason: str, tick: int) -> None:
        if self._pending is not None or tick - self._last_auto_dump < self.capacity // 2:
            return
        self._last_auto_dump = tick
        self._pending = (reason, tick + self.post_ticks)
        log.warning("tick %d: %s: flight recorder dump in %d ticks", tick, reason, self.post_ticks)

    def _dump(self, reason: str, tick: int) -> None:
        """Copy the rings oldest-first (fast) and hand the copy to the writer thread."""
        n = min(self.count, self.capacity)
        order = (np.arange(n) + (self.count - n)) % self.capacity
        c = self._controller
        arrays = {
            "tick": self.tick[order],
            "t_ns": self.t_ns[order],
            "obs": self.obs[order],
            "raw_action": self.raw[order],
            "action": self.action[order],
            "act_flags": self.flags[order],
            "faults": self.faults[order],
            "active": self.active[order],
            "stage_ns": self.stages[order],
            "events": c.safety.recent_events(),
        }
        meta = {
            "format_version": FORMAT_VERSION,
            "reason": reason,
            "tick": int(tick),
            "wall_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "rate_hz": c.config.rate_hz,
            "robots": c.robots,
            "stages": list(self._stage_names),
            "fault_bits": {str(bit): name for bit, name in REASONS.items()},
            "counters": c.counters,
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

    def close(self) -> None:
        """Write a still-pending dump, then wait for the writer."""
        if self._controller is None:
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
