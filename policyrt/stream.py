"""Socket setup for the real-time mode's two links per robot (docs/PROTOCOL.md, section 1).

The session link carries HELLO/SPEC/ESTOP/CLEAR/HEARTBEAT/BYE and must stay reliable: a CLEAR
must never be overwritten. The stream link carries only OBS and ACT with `ZMQ_CONFLATE = 1`: each
queue holds the newest frame, so a receiver that was busy for three ticks reads the latest
observation, not the oldest of three.

Both are plain `policyrt.link.Link`s. The extra socket options ride on Link's `curve` hook, which
runs before bind/connect -- the only moment ZeroMQ takes CONFLATE or IMMEDIATE into account --
and then hands over to the real CURVE setup when there is one.

Board-side module: standard library, numpy and pyzmq only, Python 3.10.
"""

from __future__ import annotations

import zmq

from policyrt.link import Link


def stream_endpoint(endpoint: str) -> str:
    """Endpoint of the second, latest-value socket pair reserved for the real-time mode.

    Derived from the session endpoint so both sides agree without configuration:
    tcp://HOST:PORT -> tcp://HOST:PORT+1, ipc://PATH -> ipc://PATH.stream. Lockstep does not
    use it (see docs/PROTOCOL.md, "Sockets").
    """
    if endpoint.startswith("tcp://"):
        host, sep, port = endpoint[len("tcp://") :].rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65535:
            raise ValueError(f"tcp endpoint needs an explicit port below 65535: {endpoint!r}")
        return f"tcp://{host}:{int(port) + 1}"
    if endpoint.startswith(("ipc://", "inproc://")):
        return endpoint + ".stream"
    raise ValueError(f"unsupported endpoint {endpoint!r}: use tcp://HOST:PORT or ipc://PATH")


class _SocketOptions:
    """A `curve=` object for Link that sets socket options, then applies the real CURVE setup."""

    def __init__(self, options: dict[int, int], curve=None):
        self.options, self.curve = options, curve

    def configure(self, sock: zmq.Socket, *, bind: bool, context: zmq.Context) -> None:
        for option, value in self.options.items():
            sock.setsockopt(option, value)
        if self.curve is not None:
            self.curve.configure(sock, bind=bind, context=context)


def open_session_link(endpoint: str, *, bind: bool, context=None, curve=None) -> Link:
    """The reliable control link. Sends never block (a real-time loop must not wait on a peer).
    The connecting side sets ZMQ_IMMEDIATE, so frames sent while the robot is away fail at once
    instead of queueing up and arriving as a burst of stale HELLOs when it comes back."""
    options = {} if bind else {zmq.IMMEDIATE: 1}
    return Link(endpoint, bind=bind, context=context, send_timeout_ms=0, curve=_SocketOptions(options, curve))


def open_stream_link(endpoint: str, *, bind: bool, context=None, curve=None) -> Link:
    """The latest-value OBS/ACT link on `stream_endpoint(endpoint)`; sends never block."""
    return Link(
        stream_endpoint(endpoint),
        bind=bind,
        context=context,
        send_timeout_ms=0,
        curve=_SocketOptions({zmq.CONFLATE: 1}, curve),
    )
