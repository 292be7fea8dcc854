"""Batched sessions (num_envs > 1) at the wire level: the sim server in its own process driven by
a hand-written controller, and the batched controller loop driven by a hand-written robot."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import pytest
from stand_in_session import PENDULUM_GAIN, StandInManifest
from wire_helpers import (
    PATIENCE_S,
    RawController,
    ScriptedRobot,
    endpoint_for,
    pendulum_spec,
    reap_processes,
    start_sim_server,
)

from policyrt.controllers.core import SpecMismatchError
from policyrt.controllers.lockstep import run_lockstep
from policyrt.protocol import ActFlag, Encoder, MsgType, SlotFlag

pytest.importorskip("gymnasium")

DONE = SlotFlag.TERMINATED | SlotFlag.TRUNCATED


@pytest.fixture(autouse=True)
def _reap():
    yield
    reap_processes()


# --- the batched sim server -------------------------------------------------------------------


def test_each_slot_ends_and_resets_on_its_own_and_exactly_n_episodes_are_played(tmp_path):
    """Slot 0 is pushed over at once, slot 1 gets no push (falls on its own), slot 2 is balanced
    until the time limit: three different episode ends, each followed by a RESET row in that slot
    only, while the other slots' step counters run on."""
    ep = endpoint_for("ipc")
    results = tmp_path / "serve.json"
    server = start_sim_server(ep, "--num-envs", "3", "--episodes", "5", "--env-arg", "max_episode_steps=30",
                              "--seed", "7", results=results)
    ctl = RawController(ep)
    enc = Encoder(act_dim=1, num_envs=3)
    rows = []  # (tick, slot, flags, episode, step)
    try:
        spec = ctl.hello()
        assert spec.num_envs == 3
        ctl.link.num_envs = 3
        tick = 0
        while True:
            msg = ctl.recv()
            if msg.type is MsgType.BYE:
                break
            assert msg.type is MsgType.OBS_BATCH and msg.values.shape == (3, 5)
            flags, episodes, steps = msg.slots
            rows += [(tick, s, int(flags[s]), int(episodes[s]), int(steps[s])) for s in range(3)]
            obs = msg.values[:, :-1]
            actions = np.array([[3.0], [0.0], PENDULUM_GAIN @ obs[2]], np.float32)
            ctl.send(enc.act_batch(actions, np.zeros(3), ack=msg.seq))  # every batch is answered
            tick += 1
    finally:
        ctl.close()
    out, err = server.communicate(timeout=PATIENCE_S)
    assert server.returncode == 0, err

    ends = [(t, s, e, st) for t, s, f, e, st in rows if f & DONE]
    assert sorted(e for _, _, e, _ in ends) == [0, 1, 2, 3, 4]  # each episode ended exactly once
    first_end = {s: min(t for t, slot, _, _ in ends if slot == s) for s in range(3)}
    assert first_end[0] < first_end[1] < first_end[2] == 30  # pushed < unpushed < balanced to the limit
    for t, s, _, _ in ends:
        following = [r for r in rows if r[0] == t + 1 and r[1] == s]
        if following:  # the slot's next row: the next episode's RESET row, or IDLE once all are out
            assert following[0][2] in (SlotFlag.RESET, SlotFlag.IDLE)
        others = [r for r in rows if r[0] == t + 1 and r[1] != s and not r[2] & (SlotFlag.RESET | SlotFlag.IDLE)]
        for _, slot, _, _, step in others:  # neighbours were not reset: their steps go on
            assert step == 1 + next(r[4] for r in rows if r[0] == t and r[1] == slot)
    starts = sorted((e, t) for t, _, f, e, _ in rows if f & SlotFlag.RESET)
    assert [e for e, _ in starts] == [0, 1, 2, 3, 4]  # 3 and 4 start only when a slot frees up
    assert any(f & SlotFlag.IDLE for _, _, f, _, _ in rows)  # slots with no episode left go idle

    report = json.loads(results.read_text())
    assert report["num_envs"] == 3 and report["seeding"] == "episode" and report["aborted_episodes"] == 0
    assert sorted(e["index"] for e in report["episodes"]) == [0, 1, 2, 3, 4]
    assert report["steps"] == sum(e["length"] for e in report["episodes"])
    assert report["errors"] == {}


def _play(tmp_path, env_threads: str) -> tuple[list, dict]:
    """Four environments, one pushed over each tick and the others balanced, to the end; returns
    every OBS_BATCH as (values, flags, episodes, steps) and the server's report."""
    ep = endpoint_for("ipc")
    results = tmp_path / f"serve-{env_threads}.json"
    server = start_sim_server(ep, "--num-envs", "4", "--episodes", "7", "--env-arg", "max_episode_steps=25",
                              "--seed", "3", "--env-threads", env_threads, results=results)
    ctl = RawController(ep)
    enc = Encoder(act_dim=1, num_envs=4)
    frames = []
    try:
        ctl.hello()
        ctl.link.num_envs = 4
        while (msg := ctl.recv()).type is not MsgType.BYE:
            frames.append((msg.values.copy(), *(a.copy() for a in msg.slots)))
            actions = (msg.values[:, :-1] @ PENDULUM_GAIN.T).astype(np.float32)
            actions[0] = 3.0
            ctl.send(enc.act_batch(actions, np.zeros(4), ack=msg.seq))
    finally:
        ctl.close()
    _, err = server.communicate(timeout=PATIENCE_S)
    assert server.returncode == 0, err
    return frames, json.loads(results.read_text())


def test_two_stepping_threads_play_exactly_what_one_plays(tmp_path):
    """The environment work runs on two threads; which episode a slot takes and every observation,
    reward and flag stay the same bit for bit."""
    one, report_one = _play(tmp_path, "1")
    two, report_two = _play(tmp_path, "2")
    assert len(one) == len(two) > 25
    for a, b in zip(one, two):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert report_one["episodes"] == report_two["episodes"] and report_one["steps"] == report_two["steps"]


def test_a_controller_that_starts_over_gets_the_abandoned_episodes_again_with_their_seeds(tmp_path):
    ep = endpoint_for("ipc")
    results = tmp_path / "serve.json"
    server = start_sim_server(ep, "--num-envs", "2", "--episodes", "3", "--env-arg", "max_episode_steps=3",
                              results=results)
    ctl = RawController(ep)
    enc = Encoder(act_dim=1, num_envs=2)
    try:
        ctl.hello()
        ctl.link.num_envs = 2
        first = ctl.recv()
        ctl.send(enc.act_batch(np.zeros((2, 1)), np.zeros(2), ack=first.seq))
        ctl.recv()  # episodes 0 and 1 are one step in
        ctl.hello()  # the controller restarts
        again = ctl.recv()
        assert again.type is MsgType.OBS_BATCH
        assert again.slots[0].tolist() == [SlotFlag.RESET] * 2 and again.slots[1].tolist() == [0, 1]
        np.testing.assert_array_equal(again.values, first.values)  # same seeds, same initial states
        msg = again
        while msg.type is not MsgType.BYE:
            ctl.send(enc.act_batch(np.zeros((2, 1)), np.zeros(2), ack=msg.seq))
            msg = ctl.recv()
    finally:
        ctl.close()
    server.communicate(timeout=PATIENCE_S)
    report = json.loads(results.read_text())
    assert report["aborted_episodes"] == 2
    assert sorted(e["index"] for e in report["episodes"]) == [0, 1, 2]


def test_a_controller_that_cannot_answer_batches_ends_the_server_with_a_clear_message():
    ep = endpoint_for("ipc")
    server = start_sim_server(ep, "--num-envs", "2", "--controller-timeout", "1")
    ctl = RawController(ep)
    try:
        ctl.hello()  # then it never answers, as a version-1 controller rejecting type 9 would
        out, err = server.communicate(timeout=PATIENCE_S)
    finally:
        ctl.close()
    assert server.returncode == 1
    assert "ACT_BATCH" in err and "predates batched sessions" in err


def test_seeding_first_is_refused_for_several_environments():
    ep = endpoint_for("ipc")
    server = start_sim_server(ep, "--num-envs", "2", "--seeding", "first")
    out, err = server.communicate(timeout=PATIENCE_S)
    assert server.returncode == 2 and "seeding 'episode'" in err


# --- the batched controller loop --------------------------------------------------------------


@dataclass
class RecordingBatchSession:
    """A batch-P stand-in for Session: action = obs @ gain.T; records reset masks and steps."""

    batch_size: int
    manifest: StandInManifest = field(
        default_factory=lambda: StandInManifest(4, 1, np.array([-3.0], np.float32), np.array([3.0], np.float32))
    )
    resets: list = field(default_factory=list)
    steps: list = field(default_factory=list)  # (obs, reward, prev_action) copies

    def reset(self, mask=None) -> None:
        self.resets.append(np.array(mask, copy=True))

    def step(self, obs, reward=0.0, prev_action=None, out=None):
        self.steps.append((np.array(obs, copy=True), np.array(reward, copy=True), np.array(prev_action, copy=True)))
        np.copyto(out, np.asarray(obs, np.float32) @ PENDULUM_GAIN.T)
        return out


def test_controller_resets_only_flagged_slots_counts_episodes_per_slot_and_answers_every_batch():
    ep = endpoint_for("ipc")
    robot = ScriptedRobot(ep, replace(pendulum_spec(), num_envs=2))
    session = RecordingBatchSession(batch_size=2)
    enc = Encoder(obs_dim=4, act_dim=1, num_envs=2)
    R, T, I = int(SlotFlag.RESET), int(SlotFlag.TERMINATED), int(SlotFlag.IDLE)  # noqa: E741, N806
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run_lockstep, session, ep, episodes=3, robot_timeout_s=PATIENCE_S)
        robot.accept()
        robot.link.num_envs = 2
        acts = []

        def batch(flags, episodes, steps, rewards, obs=None):
            obs = np.full((2, 4), 0.1, np.float32) if obs is None else obs
            robot.send(enc.obs_batch(obs, rewards, flags, episodes, steps))
            msg = robot.recv()
            assert msg.type is MsgType.ACT_BATCH and msg.ack == enc.last_seq
            acts.append((msg.values.copy(), msg.slots[0].copy()))

        batch([R, R], [0, 1], [0, 0], [0.0, 0.0])
        batch([0, 0], [0, 1], [1, 1], [1.0, 1.0])
        batch([T, 0], [0, 1], [2, 2], [5.0, 1.0])  # slot 0 ends: return 1 + 5, 2 rows answered
        batch([R, 0], [2, 1], [0, 3], [0.0, 1.0])  # slot 0 starts episode 2, slot 1 goes on
        batch([0, T], [2, 1], [1, 4], [1.0, 0.0])  # slot 1 ends: return 1 + 1 + 1 + 0, 4 rows
        batch([0, I], [2, 0], [2, 0], [1.0, 0.0])  # slot 1 has nothing left
        robot.send(enc.obs_batch(np.zeros((2, 4)), [0.0, 0.0], [T, I], [2, 0], [3, 0]))
        result = future.result(PATIENCE_S)
        bye = robot.recv()
    robot.close()

    assert bye.type is MsgType.BYE and result.stop_reason == "episodes_done"
    assert [(e.index, e.slot, e.episode_return, e.length, e.terminated) for e in result.episodes] == [
        (0, 0, 6.0, 2, True), (1, 1, 3.0, 4, True), (2, 0, 2.0, 3, True)]
    masks = [m.tolist() for m in session.resets]
    assert masks == [[True, True], [True, False]]  # the second reset touches slot 0 only
    assert result.ticks == 6 and result.env_steps == 2 + 2 + 1 + 2 + 1 + 1 and result.num_envs == 2
    # prev_action is what each robot applied last: the terminal row's answer (tick 2) is not, so the
    # reset slot 0 still shows its tick-1 action (the step graph ignores a reset row's prev_action,
    # tests/test_session.py); the neighbour shows its tick-2 action
    prev_at_slot0_reset = session.steps[3][2]
    assert prev_at_slot0_reset[0] == acts[1][0][0] and prev_at_slot0_reset[1] == acts[2][0][1]
    expected = np.clip(np.full(4, 0.1, np.float32) @ PENDULUM_GAIN.T, -3, 3)
    np.testing.assert_allclose(acts[0][0], [expected, expected], rtol=1e-6)
    assert all((flags == 0).all() for _, flags in acts)


def test_controller_refuses_a_session_of_another_batch_size_without_a_factory():
    ep = endpoint_for("ipc")
    spec = replace(pendulum_spec(), num_envs=4)
    robot = ScriptedRobot(ep, spec)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run_lockstep, RecordingBatchSession(batch_size=1), ep, robot_timeout_s=PATIENCE_S)
        robot.accept()
        with pytest.raises(SpecMismatchError, match="runs 4 environments.*batch size 1"):
            future.result(PATIENCE_S)
        assert robot.recv().type is MsgType.BYE
    robot.close()


def test_controller_loads_a_session_of_the_robots_batch_size_through_the_factory():
    ep = endpoint_for("ipc")
    spec = replace(pendulum_spec(), num_envs=3)
    robot = ScriptedRobot(ep, spec)
    made = []

    def make(batch):
        made.append(batch)
        return RecordingBatchSession(batch_size=batch)

    enc = Encoder(obs_dim=4, act_dim=1, num_envs=3)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run_lockstep, RecordingBatchSession(batch_size=1), ep, episodes=1,
                             robot_timeout_s=PATIENCE_S, make_session=make)
        robot.accept()
        robot.link.num_envs = 3
        robot.send(enc.obs_batch(np.zeros((3, 4)), np.zeros(3), [SlotFlag.RESET] * 3, [0, 1, 2], [0, 0, 0]))
        assert robot.recv().type is MsgType.ACT_BATCH
        robot.send(enc.obs_batch(np.zeros((3, 4)), np.zeros(3), [SlotFlag.TRUNCATED, 0, 0], [0, 1, 2], [1, 1, 1]))
        result = future.result(PATIENCE_S)
    robot.close()
    assert made == [3] and result.stop_reason == "episodes_done" and result.episodes[0].truncated


def test_estop_turns_every_row_into_the_flagged_fallback():
    ep = endpoint_for("ipc")
    spec = replace(pendulum_spec(low=0.5, high=3.0), num_envs=2)
    robot = ScriptedRobot(ep, spec)
    enc = Encoder(obs_dim=4, act_dim=1, num_envs=2)
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(run_lockstep, RecordingBatchSession(batch_size=2), ep, robot_timeout_s=PATIENCE_S)
        robot.accept()
        robot.link.num_envs = 2
        robot.send(Encoder().control(MsgType.ESTOP))
        robot.send(enc.obs_batch(np.ones((2, 4)), np.zeros(2), [SlotFlag.RESET] * 2, [0, 1], [0, 0]))
        act = robot.recv()
        robot.send(Encoder().control(MsgType.BYE))
        result = future.result(PATIENCE_S)
    robot.close()
    np.testing.assert_array_equal(act.values, [[0.5], [0.5]])  # zero clipped into [0.5, 3]
    assert (act.slots[0] == int(ActFlag.FALLBACK | ActFlag.ESTOP)).all()
    assert result.fallbacks == 2


def test_the_lockstep_driver_and_the_eval_command_stay_board_side_clean():
    """Importing them pulls no torch, mujoco or gymnasium (the controller runs on the board)."""
    import subprocess
    import sys

    code = ("import sys, policyrt.controllers.lockstep, policyrt.commands.eval, policyrt.sim.processes; "
            "bad = [m for m in ('torch', 'mujoco', 'gymnasium') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
