"""Stopping the evaluation harness and the collector: `policyrt eval` on a shipped bundle stopped
mid-run by SIGINT or SIGTERM (with SIGINT inherited at its default and ignored) ends with exit 0,
one "interrupted" line and no traceback, and leaves neither of its two child processes
(`policyrt sim serve`, `policyrt run`) behind; the closed loop itself stops both children on
their own SIGINT; `policyrt sim collect` keeps the episodes played before the stop."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
from stop_helpers import BUNDLE, needs_bundle, wait_for_handlers
from wire_helpers import PENDULUM, reap_processes, start_policyrt

from policyrt.stopping import StopRequest

pytest.importorskip("gymnasium")

# From the signal to the eval's exit. Below the harness's grace for its children
# (sim/processes.py STOP_GRACE_S): a child that had to be killed would show as a slow stop.
EVAL_STOP_LIMIT_S = 4.0
EPISODES = 10  # a shipped bundle balances the pendulum for 1000 steps: about a second per episode


@pytest.fixture(autouse=True)
def _reap():
    yield
    reap_processes()


def children_of(pid: int) -> dict[int, tuple[str, str]]:
    """The live children of `pid` (from /proc: psutil is not a dependency), each as (start time,
    command line), so a reused pid is not mistaken for the child."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # it exited while we looked
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z":
            found[int(entry.name)] = (fields[19], cmdline)  # field 22 of stat: the start time
    return found


def still_running(children: dict[int, tuple[str, str]]) -> list[str]:
    left = []
    for pid, (started, cmdline) in children.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[19] == started and fields[0] != "Z":
            left.append(cmdline)
    return left


def stop_mid_run(proc, signum: int, command: str) -> str:
    """Signal `proc` (a policyrt command running a closed loop, both of its children started) and
    check the stop: exit 0 within the limit, one "interrupted" line, no traceback, no child left."""
    children = children_of(proc.pid)
    assert sorted("sim serve" in c for _, c in children.values()) == [False, True], children
    assert any(" run " in c for _, c in children.values()), children
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        out, err = proc.communicate(timeout=30)
    except Exception:
        proc.kill()
        out, err = proc.communicate()
    took = time.monotonic() - sent
    context = f"exit {proc.returncode} after {took:.2f} s\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    assert proc.returncode == 0, context
    assert "Traceback" not in err and "Traceback" not in out, context
    (stopped,) = [line for line in err.splitlines() if "interrupted" in line]
    assert stopped.startswith(f"policyrt {command}: interrupted by {signal.Signals(signum).name}; "), context
    assert stopped.endswith("no process left running"), context
    assert took < EVAL_STOP_LIMIT_S, context
    assert still_running(children) == [], context
    return stopped


@pytest.mark.slow
@needs_bundle
@pytest.mark.parametrize("sigint", ["SIG_DFL", "SIG_IGN"], ids=["sigint-default", "sigint-ignored"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_run_stops_eval_and_both_of_its_processes(signum, sigint):
    proc = start_policyrt("eval", str(BUNDLE), "--env", PENDULUM, "--episodes", str(EPISODES), sigint=sigint)
    seen = []
    for line in proc.stderr:  # mid-run: the first episode is over, the second being played
        seen.append(line)
        if f"1/{EPISODES} episodes" in line:
            break
    assert proc.poll() is None, "".join(seen)
    stopped = stop_mid_run(proc, signum, "eval")
    assert stopped.endswith("; no report, no process left running")


@pytest.mark.slow
@needs_bundle
def test_sigterm_mid_run_stops_demo_and_both_of_its_processes(tmp_path):
    proc = start_policyrt("demo", "--bundle", str(BUNDLE), "--episodes", str(EPISODES), "--report", str(tmp_path))
    deadline = time.monotonic() + 60
    while len(children_of(proc.pid)) < 2:  # both processes of the closed loop started
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(2.0)  # into the session (a stop during the children's start-up is fine too)
    stop_mid_run(proc, signal.SIGTERM, "demo")
    assert not any(tmp_path.iterdir())  # no report


@needs_bundle
def test_the_closed_loop_stops_both_children_on_their_own_sigint(tmp_path):
    """A stop request mid-run (here the first episode's end): Interrupted with the reason, after
    both children exited 0 (their own stop: BYE and summary, not a kill)."""
    from policyrt.sim.processes import Interrupted, closed_loop

    stop = StopRequest()  # not the process's STOP: this test process keeps running
    started = time.monotonic()
    with pytest.raises(Interrupted) as caught:
        closed_loop(str(BUNDLE), PENDULUM, 50, on_episode=lambda _event: stop.request("test"), stop=stop)
    assert caught.value.reason == "test" and str(caught.value) == "interrupted by test"
    assert caught.value.child_exits == {"sim serve": 0, "run": 0}
    assert time.monotonic() - started < 60  # 50 episodes would take far longer
    assert all("policyrt.cli" not in c for _, c in children_of(os.getpid()).values())


def test_an_evaluation_asked_to_stop_starts_no_process():
    from policyrt.sim.evaluate import Candidate, EvalConfig, evaluate
    from policyrt.sim.processes import Interrupted

    stop = StopRequest()
    stop.request("test")
    with pytest.raises(Interrupted, match="interrupted by test"):
        evaluate(EvalConfig(PENDULUM, 2), Candidate(str(BUNDLE)), stop=stop)
    assert all("policyrt.cli" not in c for _, c in children_of(os.getpid()).values())


def test_collect_stopped_before_the_first_episode_writes_nothing(tmp_path):
    from policyrt.sim.collect import CollectConfig, collect

    stop = StopRequest()
    stop.request("test")
    assert collect(CollectConfig(episodes=3), out=tmp_path / "data", progress=False, stop=stop) is None
    assert not (tmp_path / "data").exists()


def test_sigterm_mid_collect_keeps_the_episodes_played(tmp_path):
    from policyrt.episodes import load_dataset

    out = tmp_path / "data"
    proc = start_policyrt("sim", "collect", "--env", PENDULUM, "--episodes", "100000", "--format", "npz",
                          "--out", str(out))
    wait_for_handlers(proc)
    text = ""
    while not re.search(r"\b([3-9]|\d\d+)/100000\b", text):  # tqdm's count on stderr: 3 episodes or more
        chunk = os.read(proc.stderr.fileno(), 4096).decode(errors="replace")
        assert chunk, f"collect ended early (exit {proc.wait()}):\n{text}"
        text += chunk
    proc.send_signal(signal.SIGTERM)
    out_text, err = proc.communicate(timeout=30)
    err = text + err
    assert proc.returncode == 0 and "Traceback" not in err, err
    (stopped,) = [line for line in err.splitlines() if "interrupted" in line]
    kept = int(re.search(r"interrupted by SIGTERM after (\d+) of 100000 episodes; those are kept", stopped)[1])
    dataset = load_dataset(out)
    assert len(dataset.episodes) == kept >= 3
    assert dataset.meta["interrupted"] == {"by": "SIGTERM", "episodes_requested": 100000}
    assert json.loads((out / "dataset.json").read_text())["episodes"] == kept
    assert f"{kept} episodes" in out_text


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
