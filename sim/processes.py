"""Closed-loop harness: a sim server and a controller as two real processes, their JSON results, and
the server's episode events (sim/episode_events.py) for progress as episodes end.

Used by the evaluation (sim/evaluate.py) and `policyrt bench --loop`. The server is
`policyrt sim serve --events PATH`: each finished episode becomes one JSON line there, which a
follower thread hands to `on_episode` while the run goes on; no log line is parsed.

Stopping: the harness waits on the process's StopRequest (policyrt/stopping.py) next to its
children. On a stop it does what Ctrl-C at a terminal does to the whole process group, for a
SIGTERM too: SIGINT to both children, which say BYE to each other and exit; what is still running
after STOP_GRACE_S is killed, and `Interrupted` is raised. No child outlives the harness, whatever
ends it (a KeyboardInterrupt in a command that is not stop-driven included).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from policyrt.stopping import STOP, StopRequest

from .episode_events import EpisodeEventFollower

# A stopped child says BYE and exits within a tick or a receive once its driver runs; one still
# loading its session takes a moment longer. Past this it is killed.
STOP_GRACE_S = 5.0
_POLL_S = 0.02  # how often a child's exit is looked for while waiting on the stop request


class Interrupted(Exception):
    """A stop request (SIGINT, SIGTERM, or StopRequest.request) ended the work before it was done;
    every child process it had started has been stopped. `child_exits`: the exit status of each
    child it stopped, by command (0: it stopped on its SIGINT; -9: it was killed)."""

    def __init__(self, reason: str | None):
        super().__init__(f"interrupted by {reason}")
        self.reason = reason
        self.child_exits: dict[str, int] = {}


def policyrt_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "policyrt.cli", *args]


def closed_loop(bundle: str, env_id: str, episodes: int, endpoint: str | None = None, seed: int = 0,
                backend: str = "auto", spin_us: int = 0, timeout_s: float = 600.0, *, num_envs: int = 1,
                seeding: str | None = None, env_args: Sequence[str] = (), stage_times_dir: Path | None = None,
                on_episode: Callable[[dict], None] | None = None,
                target_return: float | None = None, threads: int = 1,
                env_threads: int | None = None, stop: StopRequest = STOP) -> tuple[dict, dict]:
    """Run `policyrt sim serve` and `policyrt run` against each other; returns (server, controller) results.

    num_envs: environments in the server (one session of that batch in the controller). seeding:
    the server's --seeding. env_args: KEY=VALUE passed to gymnasium.make. stage_times_dir: keep the
    raw stage durations there (server_times.npz, controller_times.npz). on_episode(event): called
    with each finished episode's event, in the order the server ended them, all of them before this
    returns. target_return: commanded return (None: the bundle's). threads: the controller's ONNX
    Runtime intra-op threads. env_threads: the server's stepping threads (None: its default).
    stop: on a stop request both processes are stopped and Interrupted is raised.
    """
    with tempfile.TemporaryDirectory(prefix="policyrt-loop-") as tmp:  # results, events and the ipc socket
        work = Path(tmp)
        server_args = ["--env", env_id, "--episodes", str(episodes), "--seed", str(seed), "--spin-us", str(spin_us),
                       "--connect-timeout", "60", "--num-envs", str(num_envs)]
        server_args += ["--seeding", seeding] if seeding else []
        server_args += [] if env_threads is None else ["--env-threads", str(env_threads)]
        for item in env_args:
            server_args += ["--env-arg", item]
        controller_args = [bundle, "--episodes", str(episodes), "--backend", backend, "--spin-us", str(spin_us)]
        controller_args += [] if target_return is None else ["--target-return", repr(float(target_return))]
        controller_args += [] if threads == 1 else ["--threads", str(threads)]
        if stage_times_dir is not None:
            server_args += ["--stage-times", str(Path(stage_times_dir) / "server_times.npz")]
            controller_args += ["--stage-times", str(Path(stage_times_dir) / "controller_times.npz")]
        events = EpisodeEventFollower(work / "events.jsonl", on_episode)
        server_args += ["--events", str(events.path)]
        return _closed_loop(work, endpoint or f"ipc://{work}/robot.sock", server_args, controller_args,
                            timeout_s, events, stop)


class _OutputDrain:
    """Reads a process's output on a thread: the pipe never fills up (a long run logs a line per
    episode) and the tail stays available for error messages."""

    def __init__(self, proc: subprocess.Popen):
        self.tail: deque[str] = deque(maxlen=60)
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            self.tail.append(line)

    def text(self) -> str:
        self._thread.join(timeout=5)
        return "".join(self.tail)


def _closed_loop(work: Path, endpoint: str, server_args: list[str], controller_args: list[str], timeout_s: float,
                 events: EpisodeEventFollower, stop: StopRequest) -> tuple[dict, dict]:
    server_json, controller_json = work / "server.json", work / "controller.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started: list[subprocess.Popen] = []
    events.start()
    try:
        if stop.requested:
            raise Interrupted(stop.reason)
        server = _start(started, env, "sim", "serve", "--bind", endpoint, "--results", str(server_json), *server_args)
        controller = _start(started, env, "run", controller_args[0], "--connect", endpoint,
                            "--results", str(controller_json), *controller_args[1:])
        server_out, controller_out = _OutputDrain(server), _OutputDrain(controller)
        _wait_for(controller, timeout_s, stop)
        if controller.returncode != 0:  # the server would only wait for its connect timeout
            server.kill()
        _wait_for(server, 30.0, stop)
    except subprocess.TimeoutExpired:
        _stop_children(started, grace_s=0.0)
        raise RuntimeError(f"closed loop did not finish within {timeout_s:.0f} s") from None
    except BaseException as exc:  # Interrupted, or KeyboardInterrupt where the command is not stop-driven
        exits = _stop_children(started, grace_s=STOP_GRACE_S)
        if isinstance(exc, Interrupted):
            exc.child_exits = dict(zip(("sim serve", "run"), exits))
        raise
    finally:
        events.stop()  # the last events: on_episode has seen every episode before the results are read
    if controller.returncode != 0 or server.returncode != 0 or not controller_json.exists() or not server_json.exists():
        raise RuntimeError(
            f"closed loop failed (controller exit {controller.returncode}, server exit {server.returncode})\n"
            f"--- controller ---\n{controller_out.text()[-3000:]}\n--- server ---\n{server_out.text()[-3000:]}"
        )
    return json.loads(server_json.read_text()), json.loads(controller_json.read_text())


def _start(started: list[subprocess.Popen], env: dict, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen(policyrt_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    started.append(proc)
    return proc


def _wait_for(proc: subprocess.Popen, timeout_s: float, stop: StopRequest) -> None:
    """Until `proc` exits; subprocess.TimeoutExpired after timeout_s, Interrupted on a stop request
    (also one that came as the child exited: Ctrl-C at a terminal signals the whole process group,
    so a child may have stopped on its own first)."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and not stop.requested:
        left = deadline - time.monotonic()
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, timeout_s)
        stop.wait(min(left, _POLL_S))
    if stop.requested:
        raise Interrupted(stop.reason)


def _stop_children(procs: Sequence[subprocess.Popen], grace_s: float) -> list[int]:
    """SIGINT to every child still running (their own stop: BYE, summary, exit 0), up to grace_s
    for them to exit, then SIGKILL for the rest; all of them reaped. Returns their exit statuses."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return [proc.returncode for proc in procs]
