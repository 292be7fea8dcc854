"""The real-time controller against hand-driven robots: real sockets (session + conflated
stream), the controller in a thread of the test process. Nothing here asserts on durations: tests
wait on counters and on the frames that arrive."""

from __future__ import annotations

import time

import numpy as np
import pytest
from realtime_helpers import (
    NaNSession,
    RealtimeRobot,
    SlowSession,
    linear_session,
    recv_type,
    run_in_thread,
    spec,
    wait_until,
)
from wire_helpers import PATIENCE_S, endpoint_for

from policyrt.controllers.flight_recorder import load_dump
from policyrt.controllers.realtime_loop import RealtimeController
from policyrt.controllers.results import format_result
from policyrt.controllers.safety import ESTOP
from policyrt.controllers.settings import RealtimeConfig
from policyrt.protocol import ActFlag, MsgType, ObsFlag

FALLBACK = int(ActFlag.FALLBACK)
FALLBACK_ESTOP = int(ActFlag.FALLBACK | ActFlag.ESTOP)
# Staleness and deadlines never interfere unless a test asks for them: a loaded test machine
# must not turn a correct answer into a fallback.
CALM = dict(rate_hz=500.0, stale_after_s=PATIENCE_S, deadline_s=PATIENCE_S)


class Harness:
    """A controller in a thread plus one RealtimeRobot per endpoint; always stopped at the end."""

    def __init__(self, session, n_robots=1, robot_spec=None, **config):
        self.endpoints = [endpoint_for("ipc") for _ in range(n_robots)]
        self.robots = [RealtimeRobot(ep, robot_spec or spec()) for ep in self.endpoints]
        cfg = dict(CALM)
        cfg.update(config)
        self.recorder = cfg.pop("recorder", None)
        episodes, observers = cfg.pop("episodes", None), cfg.pop("observers", ())
        self.controller = RealtimeController(
            session, self.endpoints, RealtimeConfig(**cfg), recorder=self.recorder, episodes=episodes,
            observers=observers,
        )
        self.thread, self.box = run_in_thread(self.controller)

    @property
    def robot(self) -> RealtimeRobot:
        return self.robots[0]

    def counters(self) -> dict:
        return self.controller.counters

    def stop(self):
        self.controller.request_stop()
        self.thread.join(PATIENCE_S)
        assert not self.thread.is_alive(), "the controller did not stop"
        if "error" in self.box:
            raise self.box["error"]
        return self.box["result"]

    def close(self):
        if self.thread.is_alive():
            self.controller.request_stop()
            self.thread.join(PATIENCE_S)
        for robot in self.robots:
            robot.close()


@pytest.fixture
def harness():
    made = []

    def make(session=None, **kwargs):
        h = Harness(session if session is not None else linear_session(record=True), **kwargs)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def test_answers_the_latest_observation_with_the_clipped_action(harness):
    h = harness()
    h.robot.accept()
    seq = h.robot.obs([0.5, 0, 0, 0], flags=ObsFlag.RESET, episode=2, step=0)
    act = h.robot.act_answering(seq)
    assert act.values.tolist() == [0.5] and act.flags == 0 and (act.episode, act.step) == (2, 0)
    seq = h.robot.obs([7.0, 0, 0, 0], reward=1.0, episode=2, step=1)
    act = h.robot.act_answering(seq)
    assert act.values.tolist() == [3.0] and act.flags == 0  # clipped to the robot's bound
    result = h.stop()
    assert result.stop_reason == "stopped" and result.counters["resets"] == 1
    assert "deadline misses" in format_result(result)


def test_a_repeated_observation_is_stepped_with_reward_zero(harness):
    session = linear_session(record=True)
    h = harness(session)
    h.robot.accept()
    seq = h.robot.obs([0.5, 0, 0, 0], reward=0.0, flags=ObsFlag.RESET)
    h.robot.act_answering(seq)
    seq = h.robot.obs([0.5, 0, 0, 0], reward=2.5, step=1)
    h.robot.act_answering(seq)
    wait_until(lambda: h.counters()["repeated_obs"] >= 2, "two ticks without a new observation")
    h.stop()
    rewards = [float(c[2][0]) for c in session.calls if c[0] == "step"]
    assert rewards.count(2.5) == 1  # counted once, then 0 while the same observation repeats


def test_stale_observation_gets_the_fallback_and_is_counted(harness):
    h = harness(stale_after_s=0.01, fallback="zero")
    h.robot.accept()
    seq = h.robot.obs([1.0, 0, 0, 0], flags=ObsFlag.RESET)
    assert h.robot.act_answering(seq).values.tolist() == [1.0]
    # The robot goes quiet: once the observation is older than stale_after_s, every ACT is the
    # fallback (zero), flagged FALLBACK, and counted per tick.
    wait_until(lambda: h.counters()["fallbacks"]["stale"] >= 3, "stale fallbacks")
    act = h.robot.next_act()
    act = h.robot.next_act()
    assert act.flags == FALLBACK and act.values.tolist() == [0.0]
    seq = h.robot.obs([1.0, 0, 0, 0], step=1)  # fresh again: the policy is back
    assert h.robot.act_answering(seq).flags == 0
    h.stop()


def test_a_policy_returning_nan_gets_the_fallback_and_a_flight_recorder_dump(harness, tmp_path):
    from policyrt.controllers.flight_recorder import FlightRecorder

    session = NaNSession(**vars(linear_session()))
    recorder = FlightRecorder(tmp_path, capacity=64, post_ticks=2)
    h = harness(session, fallback="hold", recorder=recorder)
    h.robot.accept()
    seq = h.robot.obs([0.25, 0, 0, 0], flags=ObsFlag.RESET)
    assert h.robot.act_answering(seq).values.tolist() == [0.25]
    session.poisoned = True
    seq = h.robot.obs([0.75, 0, 0, 0], step=1)
    act = h.robot.act_answering(seq)
    assert act.flags == FALLBACK and act.values.tolist() == [0.25]  # hold: the last applied action
    wait_until(lambda: recorder.dumps, "the flight recorder dump")
    result = h.stop()
    assert result.counters["fallbacks"]["nonfinite"] >= 1
    meta, arrays = load_dump(recorder.dumps[0])
    assert meta["reason"] == "nonfinite" and meta["format_version"] == 1
    assert np.isnan(arrays["raw_action"]).any() and np.isfinite(arrays["action"]).all()
    assert (np.diff(arrays["tick"]) > 0).all()  # oldest first


def test_an_inference_that_overruns_the_deadline_sends_the_fallback_in_that_tick(harness):
    session = SlowSession(**vars(linear_session()))
    session.delay_s = 0.5  # far past a 20 ms deadline, whatever the machine's load
    h = harness(session, fallback="zero", deadline_s=0.02)
    h.robot.accept()
    seq = h.robot.obs([0.5, 0, 0, 0], flags=ObsFlag.RESET)
    assert h.robot.act_answering(seq).flags == 0
    session.slow = True
    seq = h.robot.obs([0.5, 0, 0, 0], step=1)
    act = h.robot.act_answering(seq)  # the first answer to this OBS is the fallback, not the late action
    assert act.flags == FALLBACK and act.values.tolist() == [0.0]
    session.slow = False
    wait_until(lambda: h.counters()["fallbacks"]["deadline"] >= 1, "deadline fallbacks")
    seq = h.robot.obs([0.5, 0, 0, 0], step=2)
    assert h.robot.act_answering(seq).flags == 0
    c = h.stop().counters
    assert c["deadline_misses"] >= 1 and c["skipped_ticks"] >= 1  # the overrun skipped ticks


def test_estop_latches_until_clear_and_clear_resets_the_policy_state(harness):
    session = linear_session(record=True)
    h = harness(session)
    h.robot.accept()
    seq = h.robot.obs([0.5, 0, 0, 0], flags=ObsFlag.RESET)
    h.robot.act_answering(seq)
    h.robot.control(MsgType.ESTOP)
    wait_until(lambda: h.counters()["estops"] == 1, "the e-stop latch")
    for step in range(2, 5):  # fresh observations do not release it
        seq = h.robot.obs([0.9, 0, 0, 0], step=step)
        act = h.robot.act_answering(seq)
        assert act.flags == FALLBACK_ESTOP and act.values.tolist() == [0.0]
    resets_before = sum(1 for c in session.calls if c[0] == "reset")
    h.robot.control(MsgType.CLEAR)
    wait_until(lambda: not h.counters()["estop_latched"][0], "the clear")
    seq = h.robot.obs([0.9, 0, 0, 0], step=5)
    act = h.robot.act_answering(seq)
    assert act.flags == 0 and act.values.tolist() == [pytest.approx(0.9)]
    resets = [c for c in session.calls if c[0] == "reset"]
    assert len(resets) == resets_before + 1 and resets[-1][1].tolist() == [True]
    c = h.stop().counters
    assert c["estops"] == 1 and c["fallbacks"]["estop"] >= 3


def test_a_repeated_estop_counts_once(harness):
    h = harness()
    h.robot.accept()
    for _ in range(5):
        h.robot.control(MsgType.ESTOP)
    h.robot.control(MsgType.HEARTBEAT)
    wait_until(lambda: h.counters()["estops"] == 1, "the latch")
    h.robot.control(MsgType.CLEAR)
    wait_until(lambda: not h.counters()["estop_latched"][0], "the clear")
    assert h.stop().counters["estops"] == 1


def test_stop_sends_the_safe_action_and_bye(harness):
    h = harness(fallback=[0.5])
    h.robot.accept()
    seq = h.robot.obs([2.0, 0, 0, 0], flags=ObsFlag.RESET)
    assert h.robot.act_answering(seq).values.tolist() == [2.0]
    h.controller.request_stop()
    # Safe ACTs (the configured safe action, flagged FALLBACK) follow for a few ticks, then BYE.
    while True:
        act = h.robot.next_act()
        if act.flags:
            break
    assert act.flags == FALLBACK and act.values.tolist() == [0.5]
    recv_type(h.robot.session, MsgType.BYE)
    assert h.stop().stop_reason == "stopped"


def test_two_robots_have_independent_slots_and_estops(harness):
    session = linear_session(batch_size=2, record=True)
    h = harness(session, n_robots=2)
    a, b = h.robots
    a.accept()
    b.accept()
    sa = a.obs([0.5, 0, 0, 0], flags=ObsFlag.RESET)
    sb = b.obs([-0.5, 0, 0, 0], flags=ObsFlag.RESET)
    assert a.act_answering(sa).values.tolist() == [0.5]
    assert b.act_answering(sb).values.tolist() == [-0.5]
    b.control(MsgType.ESTOP)
    wait_until(lambda: h.counters()["estop_latched"] == [False, True], "robot b's latch")
    sa = a.obs([0.25, 0, 0, 0], step=1)
    sb = b.obs([0.25, 0, 0, 0], step=1)
    assert a.act_answering(sa).flags == 0
    assert b.act_answering(sb).flags == FALLBACK_ESTOP
    b.control(MsgType.CLEAR)
    wait_until(lambda: h.counters()["estop_latched"] == [False, False], "robot b's clear")
    resets = [c[1].tolist() for c in session.calls if c[0] == "reset" and c[1] is not None]
    assert resets[-1] == [False, True]  # only b's slot was reset by its CLEAR
    h.stop()


def test_a_robot_with_other_dims_gets_bye_and_stays_unserved(harness):
    h = harness(robot_spec=spec(obs_dim=3))
    h.robot.accept()
    recv_type(h.robot.session, MsgType.BYE)
    c = h.stop().counters
    assert c["spec_mismatches"] >= 1 and c["robots_connected"] == 0


def test_swap_at_a_tick_boundary_resets_the_state(harness):
    h = harness(linear_session(record=True))
    h.robot.accept()
    seq = h.robot.obs([1.0, 0, 0, 0], flags=ObsFlag.RESET)
    assert h.robot.act_answering(seq).values.tolist() == [1.0]
    new = linear_session(gain=((-1.0, 0.0, 0.0, 0.0),), record=True)
    h.controller.request_swap(new)
    wait_until(lambda: h.counters()["swaps"] == 1, "the swap")
    seq = h.robot.obs([1.0, 0, 0, 0], step=1)
    assert h.robot.act_answering(seq).values.tolist() == [-1.0]
    assert new.calls[0][0] == "reset"
    wrong = linear_session(gain=((1.0, 0.0, 0.0),))  # obs_dim 3: refused, the old one keeps running
    h.controller.request_swap(wrong)
    wait_until(lambda: h.counters()["swaps_refused"] == 1, "the refusal")
    seq = h.robot.obs([1.0, 0, 0, 0], step=2)
    assert h.robot.act_answering(seq).values.tolist() == [-1.0]
    h.stop()


def test_config_and_constructor_errors_name_the_problem():
    with pytest.raises(ValueError, match="rate_hz"):
        RealtimeConfig(rate_hz=0)
    with pytest.raises(ValueError, match="stale_after_s"):
        RealtimeConfig(rate_hz=100, stale_after_s=0)
    with pytest.raises(ValueError, match="batch size 1 but 2 robots"):
        RealtimeController(linear_session(), ["ipc:///tmp/a", "ipc:///tmp/b"], RealtimeConfig(rate_hz=100))
    with pytest.raises(ValueError, match="distinct"):
        RealtimeController(linear_session(batch_size=2), ["ipc:///tmp/a"] * 2, RealtimeConfig(rate_hz=100))


def test_estop_bit_constant_matches_the_protocol():
    assert ESTOP == 8 and int(ActFlag.ESTOP) == 2


def test_episodes_are_recorded_as_a_dataset_training_can_read(harness, tmp_path):
    from policyrt.controllers.episode_recorder import EpisodeRecorder
    from policyrt.episodes import load_dataset

    recorder = EpisodeRecorder(tmp_path / "data")
    h = Harness(linear_session(), episodes=recorder)
    try:
        h.robot.accept()
        for step, (reward, flags) in enumerate([(0.0, ObsFlag.RESET), (1.0, 0), (2.0, 0)]):
            seq = h.robot.obs([0.1 * (step + 1), 0, 0, 0], reward=reward, flags=flags, step=step)
            h.robot.act_answering(seq)
        h.robot.obs([9.0, 0, 0, 0], reward=3.0, flags=ObsFlag.TERMINATED, step=3)  # not answered
        wait_until(lambda: h.counters()["terminal_obs"] == 1, "the terminal observation")
        seq = h.robot.obs([0.5, 0, 0, 0], flags=ObsFlag.RESET, episode=1)
        h.robot.act_answering(seq)
        h.stop()
    finally:
        h.close()
    data = load_dataset(tmp_path / "data")
    first, second = data.episodes
    assert first.rewards.tolist() == [1.0, 2.0, 3.0]
    assert first.terminations.tolist() == [False, False, True] and not first.truncations.any()
    assert first.observations[:, 0].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert first.actions[:, 0].tolist() == pytest.approx([0.1, 0.2, 0.3])  # gain 1, within bounds
    assert len(second) == 1 and second.truncations.tolist() == [True]  # cut by the stop
    assert data.meta["env_id"] == "scripted real-time robot" and data.meta["action_high"] == [3.0]


def test_cyclic_garbage_from_other_threads_is_collected_in_the_slack_of_a_tick(harness, monkeypatch):
    """Automatic collections are off during the run, but a weeks-long daemon must not accumulate the
    cycles its other threads leave: the loop collects them itself every GC_EVERY_S."""
    import gc
    import weakref

    from policyrt.controllers import realtime_loop

    monkeypatch.setattr(realtime_loop, "GC_EVERY_S", 0.05)

    class Node:
        pass

    h = harness()
    h.robot.accept()
    h.robot.act_answering(h.robot.obs([0.1, 0, 0, 0], flags=ObsFlag.RESET))  # the loop runs, gc disabled
    assert not gc.isenabled()
    cycle = Node()
    cycle.me = cycle  # freed only by a collection
    alive = weakref.ref(cycle)
    del cycle
    deadline = time.monotonic() + PATIENCE_S
    while alive() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert alive() is None
    h.stop()


class TickLog:
    """An observer that keeps what each tick's record said about robot slot 0."""

    def __init__(self):
        self.started, self.closed, self.records, self.ticks = [], 0, set(), []

    def on_start(self, run, record) -> None:
        self.started.append((run.batch, run.obs_dim, run.act_dim, run.stages, run.robots))

    def on_tick(self, record) -> None:
        self.records.add(id(record))
        if record.new_obs[0]:
            self.ticks.append((record.tick, bool(record.live[0]), bool(record.reset[0]), float(record.obs[0, 0]),
                               float(record.actions[0, 0]), int(record.obs_flags[0]), record.stepped))

    def on_close(self) -> None:
        self.closed += 1


def test_observers_get_one_preallocated_tick_record_and_see_what_was_sent(harness):
    log = TickLog()
    h = harness(observers=[log])
    h.robot.accept()
    seq = h.robot.obs([0.5, 0, 0, 0], flags=ObsFlag.RESET)
    h.robot.act_answering(seq)
    seq = h.robot.obs([9.0, 0, 0, 0], reward=1.0, step=1)
    h.robot.act_answering(seq)
    h.robot.obs([0.25, 0, 0, 0], reward=1.0, flags=ObsFlag.TERMINATED, step=2)
    wait_until(lambda: h.counters()["terminal_obs"] == 1, "the terminal observation")
    h.stop()
    assert log.started == [(1, 4, 1, ("receive", "infer", "filter", "send", "tick"), (h.endpoints[0],))]
    assert log.closed == 1 and len(log.records) == 1  # the same object every tick
    (t0, *first), (t1, *second), (t2, *terminal) = log.ticks
    assert t0 < t1 < t2
    assert first == [True, True, 0.5, 0.5, int(ObsFlag.RESET), True]
    assert second == [True, False, 9.0, 3.0, 0, True]  # the action sent: clipped to the bound
    assert terminal[:3] == [False, False, 0.25] and terminal[4] == int(ObsFlag.TERMINATED)
