"""The safety chain between the policy's output and the wire: the last code that touches an action.

Order, per robot slot and tick:

1. **non-finite guard** -- a NaN or infinity anywhere in a slot's action marks the slot
   `nonfinite`; such a row is never clipped into a plausible-looking number and sent.
2. **clip to bounds** -- the intersection of the robot's SPEC bounds and the bundle's.
3. **rate limit** -- at most `max_delta` change per tick against the action applied last tick
   (per dimension). The result stays inside the bounds because it lies between the clipped
   action and the last applied one, which both do.
4. **fallback** -- a slot with any fault (`nonfinite`, `stale` observation, `deadline` missed,
   `estop` latched, `obs_range`: an observation outside the bundle's recorded range, found by the
   control core's observation guard, controllers/core.py) gets the fallback action instead: `hold` (the last applied action), `zero`
   (zero clipped into the bounds, i.e. the bound nearest to zero), or a configured safe action
   (clipped into the bounds). A latched e-stop never holds: it always sends the safe action
   (zero or the configured one), since holding the last command is a way of continuing, not of
   stopping. Fallbacks bypass the rate limiter on purpose: a safe action that is needed now must
   not be approached gradually.

Faults are counted per tick and slot (`counts`); the start and the end of each fault run are
logged with their tick (the first ten runs of each reason, then every hundredth) and kept in a
preallocated event ring that the flight recorder dumps, so a fault that lasts 10,000 ticks is two
log lines, not 10,000, and a deadline missed every second does not flood the log either.

Pure numpy, preallocated: `filter` allocates nothing on the fault-free path. The chain owns the
previous action (`applied`); the controller core feeds it to the policy as prev_action.
Board-side module: standard library and numpy only, Python 3.10.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

# Fault bits, one per reason a slot gets the fallback action. uint8 masks, so the loop can OR
# several together per slot without the enum machinery on the hot path.
NONFINITE = 1
STALE = 2
DEADLINE = 4
ESTOP = 8
OBS_RANGE = 16  # the observation left the bundle's recorded range (controllers/core.py): like STALE
REASONS = {NONFINITE: "nonfinite", STALE: "stale", DEADLINE: "deadline", ESTOP: "estop", OBS_RANGE: "obs_range"}

# ACT flag bits (docs/PROTOCOL.md section 4), repeated as plain ints for the hot path.
ACT_FALLBACK = 1
ACT_ESTOP = 2

FALLBACK_MODES = ("hold", "zero")
LOG_FIRST, LOG_EVERY = 10, 100  # fault runs logged: the first 10 of each reason, then every 100th


def loud(n: int) -> bool:
    """Log the n-th run of a kind of fault? The first LOG_FIRST, then every LOG_EVERY-th: a machine
    that misses a deadline every second must not also spend its time writing log lines. Every
    run is still counted (and, for the chain's reasons, in the event ring)."""
    return n <= LOG_FIRST or n % LOG_EVERY == 0


def run_note(n: int) -> str:
    """The suffix of the n-th run's log line, saying when lines start to be skipped."""
    if n == LOG_FIRST:
        return f" [run {n}; from now on only every {LOG_EVERY}th run is logged, all are counted]"
    return f" [run {n}]" if n > LOG_FIRST else ""


def parse_fallback(value) -> str | tuple[float, ...]:
    """'hold', 'zero', a list of floats, or a comma-separated string of floats ('0.0,0.5')."""
    if isinstance(value, str):
        if value in FALLBACK_MODES:
            return value
        try:
            return tuple(float(v) for v in value.split(","))
        except ValueError:
            raise ValueError(
                f"fallback {value!r} is neither 'hold', 'zero' nor a comma-separated list of floats "
                "(e.g. '0.0,0.5')"
            ) from None
    values = tuple(float(v) for v in value)
    if not values:
        raise ValueError("a configured fallback action needs one value per action dimension, got none")
    return values


class SafetyChain:
    """Filters a [B, act_dim] batch of policy actions into the actions sent, with ACT flags."""

    def __init__(
        self,
        low,
        high,
        *,
        batch: int = 1,
        fallback: str | Sequence[float] = "hold",
        max_delta: float | Sequence[float] | None = None,
        event_capacity: int = 4096,
    ):
        low = np.asarray(low, np.float32)
        act_dim = low.shape[-1]
        self.batch, self.act_dim = batch, act_dim
        self.low = np.empty((batch, act_dim), np.float32)
        self.high = np.empty((batch, act_dim), np.float32)
        self.low[:] = low
        self.high[:] = np.asarray(high, np.float32)
        if (self.low > self.high).any():
            raise ValueError(f"action bounds have low > high: low={low}, high={high}")
        self.mode = parse_fallback(fallback)
        if not isinstance(self.mode, str) and len(self.mode) != act_dim:
            raise ValueError(
                f"the configured fallback action has {len(self.mode)} values, the action has {act_dim} dimensions"
            )
        self.max_delta = None
        if max_delta is not None:
            delta = np.broadcast_to(np.asarray(max_delta, np.float32), (act_dim,)).copy()
            if not (np.isfinite(delta).all() and (delta > 0).all()):
                raise ValueError(f"max_delta must be positive and finite, got {max_delta!r}")
            self.max_delta = delta
        self.safe = np.empty((batch, act_dim), np.float32)  # zero or the configured safe action
        self.applied = np.empty((batch, act_dim), np.float32)  # what each robot got last tick
        self.out = np.zeros((batch, act_dim), np.float32)
        self.flags = np.zeros(batch, np.uint32)  # ACT flags per slot, valid after filter()
        self.onsets = 0  # OR of the fault bits whose run began in the last filter()
        self._flagged = False  # some flag is set: clear them before the next tick
        self._finite_cells = np.ones((batch, act_dim), bool)
        # Set by filter(): some row of `raw` was non-finite (active or not); `finite_rows` then
        # says which rows were finite. The control core resets the others' policy state.
        self.raw_nonfinite = False
        self.finite_rows = np.ones(batch, bool)
        self._active_arg: np.ndarray | None = None  # the caller's `active` and its [B, 1] view
        self._active_col: np.ndarray | None = None
        self._faulty = False  # some slot had a fault last tick (its run may end now)
        self._scratch = np.zeros((batch, act_dim), np.float32)
        self._scratch2 = np.zeros((batch, act_dim), np.float32)
        for slot in range(batch):
            self._init_slot(slot)
        self.counts = {name: 0 for name in REASONS.values()}
        self.counts["rate_limited"] = 0
        self.fallback_ticks = 0  # slot-ticks that sent the fallback action, any reason
        self.runs = {name: 0 for name in REASONS.values()}  # fault runs (onsets) per reason
        self._active = np.zeros(batch, np.uint8)  # fault bits of each slot's previous tick
        self._run_start = np.zeros((batch, 8), np.int64)  # tick each fault run began, per bit index
        # Event ring: (tick, slot, reason bit, 1 = began / 0 = ended), for the flight recorder.
        self.events = np.zeros((event_capacity, 4), np.int64)
        self.event_count = 0

    def _init_slot(self, slot: int) -> None:
        zero = np.clip(np.zeros(self.act_dim, np.float32), self.low[slot], self.high[slot])
        if isinstance(self.mode, tuple):
            wanted = np.asarray(self.mode, np.float32)
            self.safe[slot] = np.clip(wanted, self.low[slot], self.high[slot])
            if not np.array_equal(self.safe[slot], wanted):
                log.warning(
                    "slot %d: the configured fallback %s lies outside the bounds [%s, %s]; using %s",
                    slot,
                    wanted,
                    self.low[slot],
                    self.high[slot],
                    self.safe[slot],
                )
        else:
            self.safe[slot] = zero
        self.applied[slot] = zero  # before any tick, "hold" holds the safe zero

    def set_bounds(self, slot: int, low, high) -> None:
        """A robot (re)announced its bounds: recompute the slot's safe action, forget its hold."""
        self.low[slot], self.high[slot] = low, high
        self._init_slot(slot)

    def forget(self, mask) -> None:
        """Slots whose robot started over: nothing was applied there yet, so 'hold' holds zero."""
        for slot in np.flatnonzero(mask):
            self.applied[slot] = np.clip(np.zeros(self.act_dim, np.float32), self.low[slot], self.high[slot])

    def fallback_action(self, slot: int) -> np.ndarray:
        return self.applied[slot] if self.mode == "hold" else self.safe[slot]

    def filter(
        self, raw: np.ndarray | None, faults: np.ndarray, tick: int, active: np.ndarray, *, faulted: bool = True
    ) -> np.ndarray:
        """Run the chain for the slots in `active` (bool [B]); returns `self.out` ([B, act_dim]),
        with `self.flags` set. raw: the policy's [B, act_dim] output, or None when the policy was
        not stepped this tick (every active slot must then have a fault). faults: uint8 [B] bits
        the caller found (STALE, DEADLINE, ESTOP); NONFINITE is added here. Modified in place.
        faulted=False promises that `faults` is all zero (the drivers know it without a reduction).

        A non-finite row of an inactive slot is replaced by the safe action and flagged FALLBACK
        too, without being counted: a batched frame with one NaN would be rejected whole. An
        inactive slot with ESTOP in `faults` gets the safe action flagged FALLBACK|ESTOP, uncounted
        (lockstep answers terminal and idle rows too).
        The fault-free path is a handful of in-place ufuncs (minimum/maximum rather than np.clip:
        the same result, NaN included, at a third of the cost) and allocates nothing."""
        out, flags = self.out, self.flags
        self.onsets = 0
        self.raw_nonfinite = False
        if self._flagged:
            flags.fill(0)
            self._flagged = False
        if raw is None:
            faults[active & (faults == 0)] |= DEADLINE  # no action computed: treat as missed
            faulted = True
        else:
            np.minimum(raw, self.high, out=out)
            np.maximum(out, self.low, out=out)
            np.isfinite(raw, self._finite_cells)  # out positional: keyword parsing costs more than the op
            if not self._finite_cells.all():
                self._nonfinite(faults, active)
                faulted = True
            if self.max_delta is not None:
                self._rate_limit(active & (faults == 0) if faulted else active)
        if faulted or self._faulty:
            self._fallbacks(active & (faults != 0), faults, tick, active)
        if self.batch == 1:  # one robot: a plain copy is half the cost of a masked one
            if active[0]:
                self.applied[:] = out
            return out
        if active is not self._active_arg:  # a view made once per array, not per tick
            self._active_arg, self._active_col = active, active[:, None]
        np.copyto(self.applied, out, where=self._active_col)
        return out

    def _nonfinite(self, faults: np.ndarray, active: np.ndarray) -> None:
        self.raw_nonfinite = True
        finite = self._finite_cells.all(axis=1, out=self.finite_rows)
        faults[~finite & active] |= NONFINITE
        idle = ~finite & ~active
        if idle.any():
            self.out[idle] = self.safe[idle]
            self.flags[idle] = ACT_FALLBACK
            self._flagged = True

    def _rate_limit(self, rows: np.ndarray) -> None:
        out, limited, upper = self.out, self._scratch, self._scratch2
        np.subtract(self.applied, self.max_delta, out=limited)
        np.maximum(out, limited, out=limited)
        np.add(self.applied, self.max_delta, out=upper)
        np.minimum(limited, upper, out=limited)
        changed = rows & (limited != out).any(axis=1)
        if changed.any():
            self.counts["rate_limited"] += int(changed.sum())
            out[changed] = limited[changed]

    def _fallbacks(self, bad: np.ndarray, faults: np.ndarray, tick: int, active: np.ndarray) -> None:
        if bad.any():
            self._flagged = True
        for slot in np.flatnonzero(bad):
            if faults[slot] & ESTOP:  # an e-stop never holds: it sends the safe action
                self.out[slot] = self.safe[slot]
                self.flags[slot] = ACT_FALLBACK | ACT_ESTOP
            else:
                self.out[slot] = self.fallback_action(slot)
                self.flags[slot] = ACT_FALLBACK
        self.fallback_ticks += int(bad.sum())
        stopped_idle = ~active & ((faults & ESTOP) != 0)
        if stopped_idle.any():  # a row the robot ignores still says the e-stop holds (not counted)
            self.out[stopped_idle] = self.safe[stopped_idle]
            self.flags[stopped_idle] = ACT_FALLBACK | ACT_ESTOP
            self._flagged = True
        now = np.where(active, faults, self._active).astype(np.uint8)
        for bit, name in REASONS.items():
            has = (now & bit) != 0
            self.counts[name] += int((has & bad).sum())
            had = (self._active & bit) != 0
            for slot in np.flatnonzero(has & ~had):
                self.onsets |= bit
                self._event(tick, slot, bit, 1)
                self._run_start[slot, bit.bit_length()] = tick
                self.runs[name] += 1
                if loud(self.runs[name]):
                    log.warning(
                        "tick %d: robot slot %d: %s -> fallback action (%s)%s",
                        tick,
                        slot,
                        name,
                        self._mode_name(),
                        run_note(self.runs[name]),
                    )
            for slot in np.flatnonzero(had & ~has):
                self._event(tick, slot, bit, 0)
                run = tick - self._run_start[slot, bit.bit_length()]
                if loud(self.runs[name]):
                    log.warning("tick %d: robot slot %d: %s cleared after %d tick(s)", tick, slot, name, run)
        self._active[:] = now
        self._faulty = bool(now.any())

    def _mode_name(self) -> str:
        return self.mode if isinstance(self.mode, str) else "configured safe action"

    def _event(self, tick: int, slot: int, bit: int, began: int) -> None:
        self.events[self.event_count % len(self.events)] = (tick, slot, bit, began)
        self.event_count += 1

    def recent_events(self) -> np.ndarray:
        """Stored events, oldest first: int64 [n, 4] = (tick, slot, reason bit, began)."""
        n, cap = self.event_count, len(self.events)
        if n <= cap:
            return self.events[:n].copy()
        start = n % cap
        return np.concatenate([self.events[start:], self.events[:start]])
