"""The capture/replay state machine both GPU backends share, driven with recording callables."""

from __future__ import annotations

import pytest

from policyrt.runtime.graph_capture import Phase, PingPongGraphs


class Recorder:
    """Records which GPU action the state machine asked for; `fail_capture` makes capture raise."""

    def __init__(self, fail_capture=()):
        self.calls, self.fail = [], set(fail_capture)

    def eager(self, d):
        self.calls.append(("eager", d))

    def capture(self, d):
        if d in self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.calls.append(("capture", d))
        return f"graph{d}"

    def replay(self, graph):
        self.calls.append(("replay", graph))


def test_warm_up_then_capture_then_replay_alternating_directions():
    rec = Recorder()
    graphs = PingPongGraphs(rec.eager, rec.capture, rec.replay)
    for _ in range(6):
        graphs.step()
    assert rec.calls == [
        ("eager", 0), ("eager", 1),  # warm-up per direction
        ("capture", 0), ("replay", "graph0"), ("capture", 1), ("replay", "graph1"),
        ("replay", "graph0"), ("replay", "graph1"),
    ]
    assert graphs.captured


def test_failed_capture_falls_back_to_eager_in_that_direction_only():
    rec = Recorder(fail_capture={1})
    graphs = PingPongGraphs(rec.eager, rec.capture, rec.replay)
    for _ in range(6):
        graphs.step()
    assert graphs.phases == [Phase.CAPTURED, Phase.FALLBACK]
    assert rec.calls[-2:] == [("replay", "graph0"), ("eager", 1)]
    assert "not permitted" in graphs.fallback_reason
    assert sum(1 for c in rec.calls if c[0] == "eager") == 4  # warm-ups + fallback tick + one later tick


def test_no_capture_support_means_eager_every_tick():
    rec = Recorder()
    graphs = PingPongGraphs(rec.eager, None, rec.replay)
    for _ in range(4):
        graphs.step()
    assert rec.calls == [("eager", 0), ("eager", 1), ("eager", 0), ("eager", 1)]
    assert graphs.phases == [Phase.FALLBACK, Phase.FALLBACK]


@pytest.mark.parametrize("ticks_before", [1, 4])
def test_invalidate_recaptures(ticks_before):
    rec = Recorder()
    graphs = PingPongGraphs(rec.eager, rec.capture, rec.replay)
    for _ in range(ticks_before):
        graphs.step()
    graphs.invalidate()
    rec.calls.clear()
    direction = graphs.direction
    graphs.step()
    assert rec.calls == [("eager", direction)] and graphs.graphs == [None, None]


def test_the_fallback_reason_is_the_first_error_when_ending_the_capture_fails_too():
    """An enqueue that fails mid-capture often makes the end of the capture fail as well (invalidated)."""

    def capture(d):
        try:
            raise RuntimeError("TensorRT execute_async_v3 failed")
        finally:
            raise OSError("cudaErrorStreamCaptureInvalidated")

    rec = Recorder()
    graphs = PingPongGraphs(rec.eager, capture, rec.replay)
    for _ in range(3):
        graphs.step()
    assert graphs.phases[0] is Phase.FALLBACK
    assert graphs.fallback_reason.startswith("RuntimeError: TensorRT execute_async_v3 failed")
    assert "then, ending the capture, OSError: cudaErrorStreamCaptureInvalidated" in graphs.fallback_reason
