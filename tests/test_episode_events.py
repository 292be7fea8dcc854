"""Episode events (sim/episode_events.py): the sim server's writer and the harness's follower, through a
real file that one side appends to while the other follows it."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from policyrt.sim.episode_events import EpisodeEventFollower, EpisodeEventWriter

PATIENCE_S = 10.0


@dataclass(frozen=True)
class Stats:  # the shape of the sim server's EpisodeStats
    index: int
    episode_return: float
    length: int
    terminated: bool
    truncated: bool
    slot: int = 0
    seed: int | None = None


def wait_for(follower: EpisodeEventFollower, count: int) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while len(follower.events) < count:
        assert time.monotonic() < deadline, f"follower saw {len(follower.events)} event(s), expected {count}"
        time.sleep(0.01)


def test_the_follower_hands_over_each_episode_while_the_writer_is_still_running(tmp_path):
    path = tmp_path / "events.jsonl"
    handed = []
    follower = EpisodeEventFollower(path, handed.append).start()  # before the file exists, as in a run
    with EpisodeEventWriter(path) as write:
        write(Stats(0, 12.5, 13, True, False, slot=1, seed=99))
        wait_for(follower, 1)  # seen while the writer is open: progress, not a post-mortem
        write(Stats(1, 3.0, 3, False, True))
    assert follower.stop() == handed
    assert handed == [
        {"event": "episode", "index": 0, "episode_return": 12.5, "length": 13, "terminated": True,
         "truncated": False, "slot": 1, "seed": 99},
        {"event": "episode", "index": 1, "episode_return": 3.0, "length": 3, "terminated": False,
         "truncated": True, "slot": 0, "seed": None},
    ]


def test_a_line_caught_half_written_waits_for_its_end(tmp_path):
    path = tmp_path / "events.jsonl"
    follower = EpisodeEventFollower(path).start()
    with open(path, "w") as f:
        f.write('{"event": "episode", "index": 0, "len')
        f.flush()
        time.sleep(0.2)  # several polls see the torn line
        assert follower.events == []
        f.write('gth": 4}\n')
    wait_for(follower, 1)
    assert follower.stop() == [{"event": "episode", "index": 0, "length": 4}]


def test_a_line_that_is_not_an_episode_event_is_refused_by_name(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "episode", "index": 0}\nINFO: episode 1: return 3\n')
    follower = EpisodeEventFollower(path).start()
    with pytest.raises(RuntimeError, match="not an episode event: 'INFO: episode 1"):
        follower.stop()
    assert [e["index"] for e in follower.events] == [0]
