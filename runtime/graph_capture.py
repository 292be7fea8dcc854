"""When to run eagerly, when to capture a CUDA graph, when to replay it — for state ping-pong.

A step graph with state ping-pong has two directions: state set A in -> B out, and B in -> A out.
Each direction gets its own graph, because a captured graph bakes in the buffer addresses. Per
direction: the first tick runs eagerly (warm-up: lazy allocations and autotuning must not land in the
capture), the second captures and then replays (capturing records work without running it), later
ticks replay. If capture fails the direction falls back to eager for good, and says why once.

The GPU calls are injected (`run_eager`, `capture`, `replay`), so the TensorRT backend and the
torch-cuda backend share this logic and it is tested here without a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import Enum

log = logging.getLogger(__name__)


class Phase(Enum):
    NEW = "new"  # nothing run in this direction yet
    WARMED = "warmed"  # one eager run done: next tick captures
    CAPTURED = "captured"  # replaying a graph
    FALLBACK = "fallback"  # capture failed: eager forever


def failure_reason(err: BaseException) -> str:
    """The first error of a chain, then the last: a capture that fails mid-way often fails again while
    ending the capture (an invalidated capture, a CUDA-graph context manager's exit), and that second
    error would otherwise hide the reason the capture failed."""
    root = err
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__
    reason = f"{type(root).__name__}: {root}"
    return reason if root is err else f"{reason} (then, ending the capture, {type(err).__name__}: {err})"


class PingPongGraphs:
    def __init__(self, run_eager: Callable[[int], None], capture: Callable[[int], object] | None,
                 replay: Callable[[object], None]):
        """`run_eager(d)` enqueues one step in direction d (0: A->B, 1: B->A); `capture(d)` records that
        step into a graph and returns it (None: capture unsupported); `replay(graph)` launches it."""
        self._run_eager, self._capture, self._replay = run_eager, capture, replay
        self.phases = [Phase.NEW, Phase.NEW]
        self.graphs: list[object | None] = [None, None]
        self.direction = 0
        self.fallback_reason: str | None = None

    def step(self) -> None:
        d = self.direction
        phase = self.phases[d]
        if phase is Phase.CAPTURED:
            self._replay(self.graphs[d])
        elif phase is Phase.WARMED and self._capture is not None:
            try:
                graph = self._capture(d)
            except Exception as err:  # noqa: BLE001 - any capture failure means: run eagerly
                self.phases[d] = Phase.FALLBACK
                self.fallback_reason = failure_reason(err)
                log.warning("CUDA graph capture failed in direction %d, running eagerly: %s", d, self.fallback_reason)
                self._run_eager(d)
            else:
                self.graphs[d], self.phases[d] = graph, Phase.CAPTURED
                self._replay(graph)
        else:
            self._run_eager(d)
            if phase is Phase.NEW:
                self.phases[d] = Phase.WARMED if self._capture is not None else Phase.FALLBACK
        self.direction ^= 1

    def invalidate(self) -> None:
        """Buffer addresses changed (reallocation): every graph must be captured again."""
        self.phases = [Phase.NEW, Phase.NEW]
        self.graphs = [None, None]

    @property
    def captured(self) -> bool:
        return all(p is Phase.CAPTURED for p in self.phases)
