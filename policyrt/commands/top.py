"""`policyrt top`: a live terminal view of a real-time controller's telemetry."""

from __future__ import annotations

import argparse
import json
import sys

DESCRIPTION = """\
Subscribe to the telemetry PUB socket of a real-time controller (`policyrt run --mode realtime
--telemetry ENDPOINT`, or the daemon's telemetry setting) and show it: ticks, deadline misses,
skipped ticks, fallbacks per reason, e-stops, rejected frames, tick-start jitter and per-stage
latency percentiles over the last window. Redraws on every snapshot (a few per second) until
Ctrl-C; --once or --count N print that many snapshots and exit (for scripts and tests)."""

EXAMPLES = """\
examples:
  policyrt top tcp://127.0.0.1:6000
  policyrt top tcp://127.0.0.1:6000 --once
  policyrt top ipc:///tmp/telemetry.sock --count 10 --json > snapshots.jsonl"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "top",
        help="live view of a real-time controller's telemetry",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("endpoint", metavar="ENDPOINT", help="the controller's telemetry endpoint")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--count", type=int, default=None, metavar="N", help="print N snapshots and exit")
    p.add_argument("--json", action="store_true", help="print the raw JSON snapshots, one per line")
    p.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="give up when no snapshot comes for S seconds",
    )
    p.set_defaults(handler=handle)
    return p


def render(snap: dict) -> str:
    """One screen of text for a snapshot."""
    c = snap.get("counters", {})
    ticks = max(1, c.get("ticks", 0))
    fb = c.get("fallbacks", {})
    rej = c.get("rejected", {})
    lines = [
        f"policyrt controller  {snap.get('rate_hz', 0):g} Hz  robots: {', '.join(snap.get('robots', []))}",
        f"ticks {c.get('ticks', 0)}   deadline misses {c.get('deadline_misses', 0)} "
        f"({100.0 * c.get('deadline_misses', 0) / ticks:.2f}%)   skipped {c.get('skipped_ticks', 0)}   "
        f"connected {c.get('robots_connected', 0)}/{len(snap.get('robots', []))}",
        "fallbacks  "
        + "  ".join(f"{k} {v}" for k, v in fb.items())
        + f"   rate-limited {c.get('rate_limited', 0)}",
        f"e-stops {c.get('estops', 0)}  latched {c.get('estop_latched', [])}   "
        f"rejected {c.get('rejected_total', 0)}"
        + (f" ({', '.join(f'{k} {v}' for k, v in rej.items())})" if rej else ""),
    ]
    jit = snap.get("jitter") or {}
    if jit:
        lines.append(
            f"jitter     p50 {jit['p50_us']:>8.1f} us  p99 {jit['p99_us']:>8.1f} us  max {jit['max_us']:>8.1f} us"
        )
    lines.append(
        f"{'stage':<8} {'p50 us':>9} {'p99 us':>9} {'max us':>9}   (last {snap.get('window_ticks', 0)} ticks)"
    )
    for name, s in (snap.get("stages") or {}).items():
        lines.append(f"{name:<8} {s['p50_us']:>9.1f} {s['p99_us']:>9.1f} {s['max_us']:>9.1f}")
    return "\n".join(lines)


def handle(args: argparse.Namespace) -> int:
    import zmq

    from policyrt.link import limit_message_size

    count = 1 if args.once else args.count
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    limit_message_size(sock)  # a snapshot is a few KiB; a peer must not make us allocate more
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.setsockopt(zmq.RCVTIMEO, max(0, int(args.timeout * 1000)))
    sock.connect(args.endpoint)
    live = count is None and sys.stdout.isatty() and not args.json
    shown = 0
    try:
        while count is None or shown < count:
            try:
                snap = json.loads(sock.recv())
            except zmq.Again:
                print(
                    f"policyrt top: no telemetry from {args.endpoint} for {args.timeout:g} s", file=sys.stderr
                )
                return 1
            except ValueError as exc:
                print(f"policyrt top: a snapshot was not JSON ({exc}); skipped", file=sys.stderr)
                continue
            text = json.dumps(snap) if args.json else render(snap)
            print(("\x1b[H\x1b[2J" if live else "") + text, flush=True)
            shown += 1
    except KeyboardInterrupt:
        return 0
    finally:
        sock.close()
    return 0
