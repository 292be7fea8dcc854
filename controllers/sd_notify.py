"""systemd's sd_notify protocol, spoken directly: one datagram of KEY=VALUE lines per message.

A `Type=notify` service tells systemd it is ready, what it is doing and that it is still alive by
sending datagrams to the unix socket named in $NOTIFY_SOCKET (a path, or an abstract socket
written with a leading '@'). The protocol is that simple, so no systemd Python binding is needed
on the board. Without $NOTIFY_SOCKET (run from a shell, in tests, in a container without systemd)
every call is a no-op, so the daemon never has to ask whether it runs under systemd.

Watchdog: with `WatchdogSec=` systemd sets $WATCHDOG_USEC (and $WATCHDOG_PID) and restarts the
service when no WATCHDOG=1 arrives within that time. `Notifier.watchdog()` may be called as often
as one likes (every control tick); it sends at most once per half the interval, systemd's own
recommendation, and costs one clock read otherwise.

Board-side module: standard library only, Python 3.10.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages to $NOTIFY_SOCKET; every method is a no-op when it is unset."""

    def __init__(self, environ: dict | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        self._sock: socket.socket | None = None
        if address:
            # '@name' is Linux's abstract namespace: the address starts with a NUL byte.
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.watchdog_interval_s = _watchdog_interval(env)
        self._next_ping_ns = 0
        self.failed = 0  # sends that did not go out (counted, logged once: never fatal)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields) -> bool:
        """Send one message, e.g. notify(READY=1, STATUS="running"); keys as systemd spells them."""
        if self._sock is None:
            return False
        text = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._sock.sendto(text.encode(), self._address)
            return True
        except OSError as exc:
            self.failed += 1
            if self.failed == 1:
                log.warning("sd_notify to %r failed: %s (further failures only counted)", self._address, exc)
            return False

    def ready(self, status: str | None = None) -> bool:
        fields = {"READY": 1}
        if status:
            fields["STATUS"] = status
        return self.notify(**fields)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def stopping(self, status: str | None = None) -> bool:
        fields = {"STOPPING": 1}
        if status:
            fields["STATUS"] = status
        return self.notify(**fields)

    def reloading(self, status: str | None = None) -> bool:
        """Start of a reload. systemd (Type=notify-reload and newer notify handling) pairs
        RELOADING=1 with the CLOCK_MONOTONIC time in microseconds, so a stale message from an
        earlier reload is not mistaken for this one; end the reload with ready()."""
        fields = {"RELOADING": 1, "MONOTONIC_USEC": time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}
        if status:
            fields["STATUS"] = status
        return self.notify(**fields)

    def watchdog(self) -> bool:
        """WATCHDOG=1, rate-limited to half the watchdog interval; False when nothing was sent."""
        if self._sock is None or self.watchdog_interval_s is None:
            return False
        now = time.monotonic_ns()
        if now < self._next_ping_ns:
            return False
        self._next_ping_ns = now + int(self.watchdog_interval_s * 1e9 / 2)
        return self.notify(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env) -> float | None:
    """$WATCHDOG_USEC in seconds, if it is meant for this process ($WATCHDOG_PID absent or ours)."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # inherited from a parent service: its watchdog, not ours
    return int(usec) / 1e6
