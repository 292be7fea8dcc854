"""One end of a policyrt session: a ZeroMQ DEALER socket that sends and receives protocol frames.

Both ends use DEALER (docs/PROTOCOL.md, "Sockets"): it is bidirectional over one endpoint,
reconnects by itself, carries single frames, and accepts ZMQ_CONFLATE for the later real-time
stream. The robot side binds, the controller connects.

Receiving goes into one preallocated buffer (`recv_into`), so a steady stream of OBS or ACT
frames allocates no frame objects; the decoded message's values are views into that buffer
and stay valid until the next receive.

Board-side module: standard library, numpy and pyzmq only, Python 3.10.
"""

from __future__ import annotations

import itertools
import os
import struct
import time
from collections.abc import Iterator

import zmq

from policyrt.protocol import MAX_FRAME_BYTES, ErrorTally, Message, ProtocolError, decode
from policyrt.stopping import StopRequest

# Busy-polling pays only on a core of its own. A poller that is preempted waits in the run queue
# for the other tasks' time slices even once its frame is there: it never slept, so the frame's
# arrival wakes nothing, while a blocked receiver would be woken and run at once. With both ends of
# a lockstep loop spinning on a shared machine, every round trip then takes milliseconds.
# So the spin yields the CPU between polls (free when nobody else wants it) and, once a gap between
# two polls shows that another task had the CPU, gives up: the receives block for a while, then
# spinning is tried again.
_yield_cpu = getattr(os, "sched_yield", None) or (lambda: None)
_LOST_CPU_NS = 1_000_000  # a poll (and a yield to a ZeroMQ I/O thread) takes microseconds; a lost time slice, milliseconds
_SHARED_CPU_BACKOFF_NS = 200_000_000

# ZMQ_MAXMSGSIZE of every socket policyrt receives on. Without it libzmq allocates whatever size a
# peer announces (one 256 MiB frame grew a controller by 254 MiB) before the application can look
# at it; with it, libzmq drops a connection that announces a larger frame (a DEALER reconnects).
# Every valid frame fits MAX_FRAME_BYTES (protocol.decode refuses a SPEC whose data frames would
# not); twice that leaves headroom, so a frame a little too long still arrives and is counted as
# `length` (docs/PROTOCOL.md, section 7) instead of silently resetting the link.
MAX_MESSAGE_BYTES = 2 * MAX_FRAME_BYTES
# A connecting link whose connection was dropped looks for a reconnect this often while it only
# drains without waiting (the real-time loop's `pending`); a waiting receive wakes on the drop.
_WATCH_EVERY_NS = 50_000_000
# A drop after which libzmq reconnects by itself is followed at once by its CONNECT_RETRIED; one it
# made for a protocol error is not. This long is "at once" (the I/O thread emits both in a row).
# Nothing waits for it: a receive or drain that comes later decides (a real-time tick must not).
_RETRY_ANNOUNCED_MS = 20
_RETRY_ANNOUNCED_NS = _RETRY_ANNOUNCED_MS * 1_000_000
# At most one reconnect of our own per ZeroMQ's default reconnect interval: a peer that keeps
# breaking the protocol is not answered with a storm of connections.
_RECONNECT_IVL_NS = 100_000_000
_WATCHED_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_CONNECT_RETRIED
_EVENT = struct.Struct("=hi")  # a monitor event's first frame: event id, value
_monitor_names = itertools.count()


def limit_message_size(sock: zmq.Socket) -> None:
    """Bound what a peer can make this socket allocate; call before bind/connect (ZeroMQ applies
    it to the connections made after it is set)."""
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)


class Link:
    """A session socket. `recv` returns a validated Message, None on timeout, or raises
    ProtocolError; `send` returns False instead of blocking when the peer cannot take a frame."""

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool,
        context: zmq.Context | None = None,
        send_timeout_ms: int = 1000,
        curve=None,
        stop: StopRequest | None = None,
    ):
        """curve: None (plain ZeroMQ), or a CURVE setup from policyrt.controllers.auth
        (`CurveServer` for a binding robot side, `CurveClient` for a connecting controller); its
        `configure(socket, bind=, context=)` runs before bind/connect, since ZeroMQ applies security
        options only to connections made after they are set. Only setup changes: the send and
        receive paths are the same with or without it.

        stop: a StopRequest (normally policyrt.stopping.STOP) that ends a blocking receive at once
        (recv returns None: check `stop.requested` to tell it from a timeout) and the `pending`
        drain. None: receives end on a frame or their timeout only."""
        self.endpoint = endpoint
        self._ctx = context or zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.DEALER)
        # Never keep unsent frames alive past close: a dead session must not hold the process.
        self.sock.setsockopt(zmq.LINGER, 0)
        # DEALER blocks a send while it has no connected peer; bound it so a vanished peer
        # shows up as a failed send, never as a hang.
        self.sock.setsockopt(zmq.SNDTIMEO, send_timeout_ms)
        limit_message_size(self.sock)
        if curve is not None:
            curve.configure(self.sock, bind=bind, context=self._ctx)
        # libzmq reconnects a connecting socket after a lost connection, but not after one it
        # dropped for a protocol error (a frame over ZMQ_MAXMSGSIZE, garbage in the ZMTP stream):
        # the link watches for drops and connects again itself (_restore_connection).
        # (A name unique in the process: pyzmq's default is made of the socket's descriptor, and
        # descriptors are reused while a closed monitor's inproc name is released asynchronously.)
        self._monitor = None
        if not bind:
            name = f"inproc://policyrt-link-monitor-{os.getpid()}-{next(_monitor_names)}"
            self._monitor = self.sock.get_monitor_socket(_WATCHED_EVENTS, addr=name)
        self._watch_after = 0  # perf_counter_ns() before which a drain does not look at the monitor
        self._dropped_ns = 0  # perf_counter_ns() of a drop libzmq has not announced a retry for (0: none)
        self._reconnected_ns = 0  # perf_counter_ns() of the last reconnect of our own
        self.reconnects = 0
        if bind:
            self.sock.bind(endpoint)
        else:
            self.sock.connect(endpoint)
        self._buf = bytearray(MAX_FRAME_BYTES)
        self._view = memoryview(self._buf)
        self._recv_into = getattr(self.sock, "recv_into", None)  # pyzmq >= 26.4
        self._rcvtimeo = -1  # ZMQ_RCVTIMEO as set on the socket (-1: block forever, the default)
        self.obs_dim: int | None = None  # set from the SPEC; decode then checks OBS/ACT sizes
        self.act_dim: int | None = None
        self.num_envs: int | None = None  # set from the SPEC; decode then checks batched slot counts
        self.stop = stop
        self._spin_after = 0  # perf_counter_ns() before which receives do not spin (shared CPU)
        # Built once: zmq_poll on the socket, the stop request's wake-up descriptor, the monitor.
        self._poll_items = [(self.sock, zmq.POLLIN)]
        if stop is not None:
            self._poll_items.append((stop.fileno(), zmq.POLLIN))
        if self._monitor is not None:
            self._poll_items.append((self._monitor, zmq.POLLIN))

    def send(self, frame) -> bool:
        try:
            self.sock.send(frame, copy=True)  # copy: encoders reuse their buffers at once
            return True
        except zmq.Again:
            if self._monitor is not None:  # no peer: perhaps the connection was dropped for good
                self._restore_connection()
            return False

    def recv(self, timeout_s: float | None, spin_ns: int = 0) -> Message | None:
        """Wait up to timeout_s (None: forever) for one frame and decode it; None on a timeout or,
        with a `stop`, at once when a stop is requested (before or during the wait).

        spin_ns > 0 first busy-polls that long without sleeping: a blocking wake-up costs tens of
        microseconds, which is most of a loopback round trip when the answer comes quickly. The
        poll yields the CPU between tries, and a poll that finds it lost the CPU to another task
        blocks instead, and so do the receives of the next 0.2 s (see _LOST_CPU_NS).
        """
        n = -1
        if spin_ns > 0 and time.perf_counter_ns() >= self._spin_after:
            n = self._spin(spin_ns)
        if n < 0:
            n = self._blocking_read(timeout_s)
            if n < 0:
                return None
        if n > len(self._buf):
            raise ProtocolError(
                "length", f"frame of {n} bytes exceeds the {len(self._buf)}-byte receive buffer"
            )
        return decode(self._view[:n], obs_dim=self.obs_dim, act_dim=self.act_dim, num_envs=self.num_envs)

    def pending(self, limit: int, errors: ErrorTally) -> Iterator[Message]:
        """The frames already waiting, without blocking: at most `limit` of them (a flood cannot hold
        up a tick), each valid one yielded (its values stay valid until the next one is read), each
        malformed one counted in `errors` and skipped. With a `stop`, the drain ends once a stop is
        requested."""
        for _ in range(limit):
            try:
                msg = self.recv(0)
            except ProtocolError as exc:
                errors.add(exc)
                continue
            if msg is None:
                return
            yield msg

    def _spin(self, spin_ns: int) -> int:
        clock = time.perf_counter_ns
        t = clock()
        end = t + spin_ns
        while True:
            try:
                return self._read(zmq.NOBLOCK)
            except zmq.Again:
                pass
            _yield_cpu()
            t_prev, t = t, clock()
            if t - t_prev > _LOST_CPU_NS:  # the CPU is shared: block, like a receive without spin
                self._spin_after = t + _SHARED_CPU_BACKOFF_NS
                return -1
            if t >= end:
                return -1

    def _blocking_read(self, timeout_s: float | None) -> int:
        if len(self._poll_items) > 1:  # a stop request or a connection to watch
            return self._polled_read(timeout_s)
        # A blocking receive with ZMQ_RCVTIMEO rather than poll() + receive: one wake-up and no
        # Python-level poller per message. The option is only touched when the timeout changes.
        timeout_ms = -1 if timeout_s is None else max(0, int(timeout_s * 1000))
        if timeout_ms != self._rcvtimeo:
            self.sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
            self._rcvtimeo = timeout_ms
        try:
            return self._read(0)
        except zmq.Again:
            return -1

    def _polled_read(self, timeout_s: float | None) -> int:
        """Like _blocking_read, but also woken by the stop request and by a dropped connection:
        zmq_poll waits on the socket, the stop's descriptor and the monitor, then the frame is
        read without blocking (poll first, not a
        non-blocking read first: in lockstep the frame is rarely there yet, and the failed read's
        exception costs more than the poll of a waiting frame).
        (A signal's wake-up byte ends the poll, and pyzmq runs the Python handler before the poll
        returns; a request from another thread writes that byte itself: policyrt/stopping.py.)"""
        stop, monitor = self.stop, self._monitor
        if stop is not None and stop.requested:
            return -1
        if timeout_s is not None and timeout_s <= 0:
            if monitor is not None and time.perf_counter_ns() >= self._watch_after:
                self._watch_after = time.perf_counter_ns() + _WATCH_EVERY_NS
                self._restore_connection()
            try:
                return self._read(zmq.NOBLOCK)
            except zmq.Again:
                return -1
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            timeout_ms = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            deciding = self._dropped_ns != 0  # wake in time to tell libzmq's reconnect from none
            if deciding and not 0 <= timeout_ms <= _RETRY_ANNOUNCED_MS:
                timeout_ms = _RETRY_ANNOUNCED_MS
            ready = zmq.zmq_poll(self._poll_items, timeout_ms)
            if stop is not None and stop.requested:
                return -1
            dropped = monitor is not None and any(item is monitor for item, _ in ready)
            if dropped or deciding:
                self._restore_connection()
            if not ready:
                if not deciding or (deadline is not None and time.monotonic() >= deadline):
                    return -1
                continue
            try:
                return self._read(zmq.NOBLOCK)
            except zmq.Again:  # woken by the monitor, another signal's wake-up byte, or no whole frame
                if stop is not None and not (dropped and len(ready) == 1):
                    stop.spurious_wakeup()
                if deadline is not None and time.monotonic() >= deadline:
                    return -1

    def _monitor_events(self) -> list[int]:
        events = []
        while True:
            try:
                events.append(_EVENT.unpack_from(self._monitor.recv_multipart(zmq.NOBLOCK)[0])[0])
            except zmq.Again:
                return events

    def _restore_connection(self) -> None:
        """Connect again if the monitor saw the connection dropped and libzmq does not reconnect:
        it does after a lost connection, announcing CONNECT_RETRIED at once; not after a protocol
        error. Never waits: a drop with no retry announced yet is decided by a later call."""
        for event in self._monitor_events():
            self._dropped_ns = time.perf_counter_ns() if event == zmq.EVENT_DISCONNECTED else 0
        now = time.perf_counter_ns()
        if (
            self._dropped_ns
            and now - self._dropped_ns >= _RETRY_ANNOUNCED_NS
            and now - self._reconnected_ns >= _RECONNECT_IVL_NS
        ):
            self._dropped_ns, self._reconnected_ns = 0, now
            try:
                self.sock.disconnect(self.endpoint)
            except zmq.ZMQError:  # libzmq already forgot the endpoint
                pass
            self.sock.connect(self.endpoint)
            self.reconnects += 1

    def _read(self, flags: int) -> int:
        """Receive one frame into the buffer; returns its full size (larger than the buffer when
        it did not fit). A message of several frames is drained whole and refused as one."""
        if self._recv_into is not None:
            n = self._recv_into(self._buf, flags=flags)
        else:
            frame = self.sock.recv(flags)
            n = len(frame)
            if n <= len(self._buf):
                self._buf[:n] = frame
        if self.sock.getsockopt(zmq.RCVMORE):
            self._refuse_multipart()
        return n

    def _refuse_multipart(self):
        """Every policyrt message is one frame. ZeroMQ delivers a multipart message whole, so its
        other parts are already here: read them all (none may be taken for a message of its own)
        and raise one error for the message."""
        parts = 1
        while True:
            self.sock.recv(zmq.NOBLOCK, copy=False)
            parts += 1
            if not self.sock.getsockopt(zmq.RCVMORE):
                raise ProtocolError("multipart", f"a message of {parts} frames; policyrt messages are one frame")

    def close(self, linger_ms: int = 0) -> None:
        """linger_ms > 0: frames still queued (a final BYE) get that long to leave."""
        if self._monitor is not None:
            self.sock.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self.sock.close(linger=linger_ms)

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
