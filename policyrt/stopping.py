"""One stop mechanism for every long-running command: SIGINT, SIGTERM or a programmatic request.

`STOP` is the process's one StopRequest; `policyrt.cli.main()` installs it first thing. A driver
(controller lockstep and real-time, sim server, daemon) checks `stop.requested` once per tick or
whenever a receive returns nothing (`policyrt.link.Link(..., stop=STOP)` returns None at once on a
stop), sends BYE to its peer, and returns a result with stop_reason "interrupted"; the command
prints its summary and exits 0.

Why not KeyboardInterrupt: CPython installs its SIGINT handler only when SIGINT is at its default
at start-up, and a process started in the background by a non-interactive shell (`sh -c 'cmd &'`,
as CI runners and supervisors do) inherits SIGINT as ignored, so Ctrl-C-by-signal never arrives.
An exception raised at an arbitrary bytecode also leaves half-done work (a half-sent episode, a
half-written file); a flag read at a tick boundary does not. SIGTERM has no Python default at all.

Signal-handler safety: Python runs a handler on the main thread between two bytecodes, possibly
while that thread holds a lock (logging's, a buffered stream's, a threading.Event's condition).
The handler therefore takes no lock, logs nothing and prints nothing: it stores the reason and
writes one byte to a non-blocking socket, which makes `fileno()` readable for good and so wakes a
poll() or select() on it in any thread at once; request() from another thread writes the same byte.

Waking the main thread: the kernel may deliver a signal to any thread that does not block it
(ours, or a library's thread pool), and then the main thread, asleep in zmq_poll without
the GIL, is never interrupted and Python's handler waits until the poll ends. install() therefore
also makes the socket the interpreter's wake-up descriptor (signal.set_wakeup_fd): the C-level
handler writes the signal number there from whatever thread took the signal, the poll wakes, and
pyzmq runs the Python handler before it returns. Other handled signals (SIGUSR1's flight-recorder
dump, the daemon's SIGHUP) write there too: a waiter woken with no stop requested calls
`spurious_wakeup()`, which consumes those bytes, and polls again.

Board-side module: standard library only, Python 3.10.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
import weakref

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_SIGNAL_NAMES = {int(s): s.name for s in SIGNALS}  # looked up in the handler: no enum machinery


class StopRequest:
    """Process-wide stop request (SIGINT/SIGTERM or programmatic).

    The first reason wins; later signals and requests change nothing (a second Ctrl-C while the
    driver is sending BYE must not cut that short)."""

    def __init__(self):
        self._reason: str | None = None
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)  # the C-level signal handler must never block on it
        # A forked child (multiprocessing, a DataLoader worker) must not share the wake-up socket:
        # its signals and requests would wake the parent's polls.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reopen_after_fork(ref))

    def install(self) -> StopRequest:
        """Handle SIGINT and SIGTERM from now on, whatever their inherited disposition (SIG_IGN
        included). Main thread only (Python delivers signals there); calling it again is harmless."""
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("StopRequest.install() must run on the main thread: Python runs signal handlers there")
        for signum in SIGNALS:
            signal.signal(signum, self._on_signal)
        # Replaces an earlier wake-up descriptor (asyncio's, if a loop ran on the main thread).
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        return self

    def request(self, reason: str = "requested") -> None:
        """Ask every driver watching this request to stop (safe from any thread)."""
        self._set(reason)

    @property
    def requested(self) -> bool:
        return self._reason is not None

    @property
    def reason(self) -> str | None:
        """"SIGINT", "SIGTERM", the reason given to request(), or None while no stop is requested."""
        return self._reason

    def fileno(self) -> int:
        """A descriptor that becomes readable once a stop is requested and stays so: poll it next
        to a socket (zmq.zmq_poll, select) to wake a blocking wait at once. Another handled signal
        can make it readable too: then `requested` is False and spurious_wakeup() clears it."""
        return self._reader.fileno()

    def wait(self, timeout_s: float) -> bool:
        """Sleep until a stop is requested or timeout_s passes; returns `requested`. Ended by the
        signals themselves (their byte ends the select), unlike a plain sleep, which a handler only
        interrupts to resume it."""
        deadline = time.monotonic() + timeout_s
        while not self.requested:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if select.select([self._reader], [], [], left)[0]:
                self.spurious_wakeup()
        return self.requested

    def spurious_wakeup(self) -> bool:
        """Call when fileno() turned readable: False if a stop is requested (the descriptor stays
        readable); True if another signal's wake-up byte did it, which is consumed here, so the
        caller polls again."""
        if self._reason is not None:
            return False
        try:
            while self._reader.recv(64):
                pass
        except OSError:  # BlockingIOError: drained
            pass
        if self._reason is None:
            return True
        self._wake()  # a request raced the drain: keep the descriptor readable for every waiter
        return False

    # ---- internals -------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame) -> None:
        # Runs between two bytecodes of the main thread: no locks, no logging, no printing.
        self._set(_SIGNAL_NAMES.get(signum, f"signal {signum}"))

    def _set(self, reason: str) -> None:
        if self._reason is None:  # the reason before the flag a reader checks: one assignment
            self._reason = reason
        self._wake()

    def _wake(self) -> None:
        try:
            self._writer.send(b"\x00")
        except OSError:  # BlockingIOError (buffer full of earlier bytes) or closed: already awake
            pass


def _reopen_after_fork(ref: weakref.ref) -> None:
    """Give the child a wake-up pair of its own under the same descriptor numbers, so the wake-up
    descriptor registered with the interpreter and every poll list stay valid."""
    stop = ref()
    if stop is None:
        return
    reader, writer = socket.socketpair()
    for fresh in (reader, writer):
        fresh.setblocking(False)  # O_NONBLOCK belongs to the socket, so the duplicate has it too
    os.dup2(reader.fileno(), stop._reader.fileno())
    os.dup2(writer.fileno(), stop._writer.fileno())
    reader.close()
    writer.close()
    if stop._reason is not None:
        stop._wake()


STOP = StopRequest()
