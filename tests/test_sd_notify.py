"""controllers/sd_notify.py over a real unix datagram socket, as systemd would listen on it."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest

from policyrt.controllers.sd_notify import Notifier


@pytest.fixture
def listener():
    path = os.path.join(tempfile.mkdtemp(prefix="prtsd", dir="/tmp"), "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()
    os.unlink(path)


def fields(sock) -> dict:
    text = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in text.splitlines())


def test_ready_status_stopping_and_reloading(listener):
    path, sock = listener
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("running") and fields(sock) == {"READY": "1", "STATUS": "running"}
    assert n.status("swapping") and fields(sock) == {"STATUS": "swapping"}
    assert n.reloading()
    got = fields(sock)
    assert got["RELOADING"] == "1" and int(got["MONOTONIC_USEC"]) > 0
    assert n.stopping() and fields(sock) == {"STOPPING": "1"}
    n.close()


def test_abstract_socket(listener):
    name = f"prt-sd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert fields(sock) == {"READY": "1"}
    finally:
        sock.close()


def test_watchdog_pings_at_most_once_per_half_interval(listener):
    path, sock = listener
    # An hour-long watchdog: the first ping goes out, the ones right after it are held back.
    n = Notifier(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(3600 * 10**6), "WATCHDOG_PID": str(os.getpid())}
    )
    assert n.watchdog_interval_s == 3600
    assert n.watchdog() and fields(sock) == {"WATCHDOG": "1"}
    assert not any(n.watchdog() for _ in range(100))
    # A tiny interval: every call may ping again once half of it has passed.
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1"})
    sent = 0
    while sent < 3:
        sent += n.watchdog()
    for _ in range(3):
        assert fields(sock) == {"WATCHDOG": "1"}


def test_no_socket_no_watchdog_and_foreign_watchdog_are_no_ops(listener):
    assert not Notifier({}).enabled and not Notifier({}).ready() and not Notifier({}).watchdog()
    path, _ = listener
    foreign = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"})
    assert foreign.watchdog_interval_s is None and not foreign.watchdog()


def test_a_vanished_listener_is_counted_not_raised():
    n = Notifier({"NOTIFY_SOCKET": "/tmp/prt-no-such-dir/notify"})
    assert not n.ready() and n.failed == 1
