"""`policyrt estop`: an operator's emergency stop (or its release) sent to a robot endpoint."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Send ESTOP (or, with --clear, CLEAR) to the robot side bound at ENDPOINT, on its session link.
The robot latches its safe action until a CLEAR and tells its real-time controller, which latches
its fallback (ACTs flagged FALLBACK|ESTOP) until the CLEAR and then resets the policy state.
Exits 0 once the frame was handed to the connection, 1 if no robot accepted the connection within
--timeout seconds. This command is one more signal path, not a replacement for a hardware e-stop."""

EXAMPLES = """\
examples:
  policyrt estop tcp://127.0.0.1:5555              # latch the e-stop
  policyrt estop tcp://127.0.0.1:5555 --clear      # release it
  policyrt estop tcp://10.0.0.7:5555 --curve-keys keys/ --key-name operator"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "estop",
        help="send an emergency stop (or --clear) to a robot endpoint",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("endpoint", metavar="ENDPOINT", help="the robot's session endpoint, as given to --bind")
    p.add_argument("--clear", action="store_true", help="send CLEAR (release the e-stop) instead of ESTOP")
    p.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="wait this long for the robot (default: 5)"
    )
    p.add_argument("--curve-keys", metavar="DIR", help="CURVE key directory (`policyrt keys generate`)")
    p.add_argument(
        "--key-name", default="client", metavar="NAME", help="client key name in DIR (default: client)"
    )
    p.add_argument(
        "--insecure", action="store_true", help="allow an endpoint off this machine without --curve-keys"
    )
    p.set_defaults(handler=handle)
    return p


def handle(args: argparse.Namespace) -> int:
    import zmq

    from policyrt.controllers.auth import AuthError, check_endpoint
    from policyrt.link import limit_message_size
    from policyrt.protocol import Encoder, MsgType

    try:  # the loopback policy (docs/DAEMON.md, "Keys")
        check_endpoint(
            args.endpoint,
            secured=bool(args.curve_keys),
            insecure=args.insecure,
            what="endpoint",
            how="--curve-keys DIR",
        )
    except AuthError as exc:
        print(f"policyrt estop: {exc}", file=sys.stderr)
        return 2
    curve = None
    if args.curve_keys:
        from policyrt.controllers.auth import load_client

        try:
            curve = load_client(args.curve_keys, args.key_name)
        except ValueError as exc:
            print(f"policyrt estop: {exc}", file=sys.stderr)
            return 2
    from policyrt.session_control import release_global_context

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    timeout_ms = max(0, int(args.timeout * 1000))
    # IMMEDIATE: the send waits for a real connection instead of queueing for a robot that is
    # not there; LINGER: close() still delivers the frame once it was handed over.
    sock.setsockopt(zmq.IMMEDIATE, 1)
    sock.setsockopt(zmq.SNDTIMEO, timeout_ms)
    sock.setsockopt(zmq.LINGER, timeout_ms)
    limit_message_size(sock)  # it only sends, but ZeroMQ reads whatever the robot sends it
    if curve is not None:
        curve.configure(sock, bind=False, context=ctx)
    try:
        sock.connect(args.endpoint)
        kind = MsgType.CLEAR if args.clear else MsgType.ESTOP
        sock.send(bytes(Encoder().control(kind)))
    except zmq.Again:
        print(
            f"policyrt estop: no robot accepted a connection on {args.endpoint} within {args.timeout:g} s; "
            "nothing was sent (is the robot side running and bound there?)",
            file=sys.stderr,
        )
        return 1
    except zmq.ZMQError as exc:
        print(f"policyrt estop: {args.endpoint}: {exc}", file=sys.stderr)
        return 2
    finally:
        sock.close()
        # pyzmq does not terminate its global context at exit: without this the frame handed over
        # may still be queued when the process ends, and the operator's ESTOP is lost.
        release_global_context(timeout_ms)
    print(f"sent {kind.name} to {args.endpoint}")
    return 0
