"""Link.recv's busy-poll on a shared CPU: never slower than a blocking receive.

A busy-poller that is preempted waits in the run queue for the other task's time slice even once
its frame has arrived (it never slept, so the arrival wakes nothing); a blocked receiver is woken
and runs at once. Both ends of `policyrt bench --loop` spin, and on a loaded two-core machine
their round trips took milliseconds instead of hundreds of microseconds (policyrt/link.py).

The probe runs as its own process pinned to one CPU, with a CPU hog and an echo peer (which
answers each frame after a short sleep, the robot's "work") pinned there too, and times round
trips with and without a spin, interleaved in blocks so that the machine's load falls on both
alike. The check is their ratio within that one run, never a wall-clock figure: a spin that did
not give the CPU up made the spinning round trip about twice the blocking one here.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

PEER_WORK_S = 0.002  # longer than a time slice of the hog's, so an unyielding spinner gets preempted
SPIN_NS = 5_000_000  # the bench's default --spin-us 5000
BLOCKS, ROUND_TRIPS = 8, 20


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_spinning_receive_is_no_slower_than_blocking_on_a_shared_cpu(tmp_path):
    endpoint = f"ipc://{tmp_path}/spin.sock"
    probe = subprocess.run(
        [sys.executable, __file__, endpoint], capture_output=True, text=True, timeout=120
    )
    assert probe.returncode == 0, probe.stderr
    medians = json.loads(probe.stdout)
    ratio = medians["spin"] / medians["blocking"]
    assert ratio < 1.5, f"spinning round trip {ratio:.2f}x the blocking one on a shared CPU: {medians}"


def _hog() -> None:
    while True:
        pass


def _echo(endpoint: str) -> None:
    import zmq

    sock = zmq.Context().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    while True:
        frame = sock.recv()
        time.sleep(PEER_WORK_S)
        sock.send(frame)


def _probe(endpoint: str) -> dict[str, float]:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # the children inherit it
    fork = multiprocessing.get_context("fork")  # before this process makes a ZeroMQ context
    children = [fork.Process(target=_echo, args=(endpoint,), daemon=True), fork.Process(target=_hog, daemon=True)]
    for child in children:
        child.start()
    from policyrt.link import Link
    from policyrt.protocol import Encoder, MsgType

    frame = bytes(Encoder().control(MsgType.HEARTBEAT))
    times: dict[int, list[int]] = {0: [], SPIN_NS: []}
    try:
        with Link(endpoint, bind=False) as link:
            link.send(frame)
            assert link.recv(10.0) is not None, "the echo peer did not answer"
            for _ in range(BLOCKS):
                for spin_ns, rows in times.items():
                    for _ in range(ROUND_TRIPS):
                        t = time.perf_counter_ns()
                        link.send(frame)
                        assert link.recv(10.0, spin_ns) is not None
                        rows.append(time.perf_counter_ns() - t)
    finally:
        for child in children:
            child.kill()
    return {name: sorted(times[key])[len(times[key]) // 2] / 1e3 for name, key in (("blocking", 0), ("spin", SPIN_NS))}


if __name__ == "__main__":
    print(json.dumps(_probe(sys.argv[1])))
    sys.stdout.flush()
    os._exit(0)  # the daemonic children are killed; skip multiprocessing's join at exit
