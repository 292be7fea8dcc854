"""`policyrt sim serve`: run a Gymnasium MuJoCo environment as a robot speaking the wire protocol."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys

DESCRIPTION = """\
Serve a Gymnasium MuJoCo environment as a stand-in robot. The server binds ENDPOINT, waits for a
controller's HELLO, announces the environment (SPEC) and steps it with the controller's actions,
one ACT per observation (lockstep; the answer to an episode's last observation starts the next
episode instead of stepping). It stops after --episodes episodes, when the controller says
BYE, or when the controller is silent for --controller-timeout seconds.

Like a robot's driver, the server enforces the bounds it announces: an action outside them is
applied clamped to them and counted, and it never sends a non-finite value: a step whose
observation or reward is not finite (or beyond float32) ends that episode as truncated on its last
finite observation (reward 0), counted and logged once. --results, the summary and --events show
both counts (docs/PROTOCOL.md, section 5, rule 9).

--num-envs P serves P copies of the environment to one controller in batched frames (one row per
environment, each resetting on its own; the controller steps one session of batch P). Seeding:
'first' seeds the first reset and continues the RNG (the default for one environment); 'episode'
resets episode k of the run with a seed derived from (--seed, k), so every run with the same seed
plays the same episodes whatever P is (the default, and the only choice, for P > 1).

--mode realtime behaves like a robot instead: physics advances with the wall clock at the
environment's control rate (or --rate HZ, which rescales the physics timestep), the latest ACT is
applied (zero-order hold), observations go out on the conflated stream endpoint (PORT+1 or
PATH.stream), and when no ACT came for --act-timeout seconds the server applies its own safe
action (zero) until ACTs return. A slow policy therefore costs return, as on hardware. ESTOP and
CLEAR (e.g. from `policyrt estop ENDPOINT`) latch and release the safe action. It runs until
--episodes, --duration, the controller's BYE, or --controller-timeout seconds without any
controller; a controller that restarts (HELLO) gets a new episode."""

EXAMPLES = """\
examples:
  policyrt sim serve --env InvertedPendulum-v5 --bind tcp://127.0.0.1:5555
  policyrt sim serve --env Hopper-v5 --bind ipc:///tmp/hopper.sock --episodes 10 --results hopper.json
  policyrt sim serve --env InvertedPendulum-v5 --bind tcp://127.0.0.1:5555 --env-arg max_episode_steps=200
  policyrt sim serve --env InvertedPendulum-v5 --bind ipc:///tmp/pend.sock --num-envs 16 --episodes 64
  policyrt sim serve --env InvertedPendulum-v5 --bind tcp://127.0.0.1:5555 --mode realtime
  policyrt sim serve --env InvertedPendulum-v5 --bind ipc:///tmp/pend.sock --mode realtime --rate 500 --duration 60

then, in another shell:
  policyrt run bundles/inverted-pendulum-xlstm.policy --connect tcp://127.0.0.1:5555
  policyrt run bundles/inverted-pendulum-xlstm.policy --connect tcp://127.0.0.1:5555 --mode realtime --rate 25"""


def _env_arg(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value  # a bare string such as render_mode=rgb_array


def _seed(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"seed must be >= 0, got {value}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="serve a MuJoCo environment over the wire protocol",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--env", required=True, metavar="ENV_ID", help="Gymnasium id, e.g. InvertedPendulum-v5")
    p.add_argument("--bind", required=True, metavar="ENDPOINT", help="tcp://HOST:PORT or ipc://PATH")
    p.add_argument(
        "--mode",
        choices=["lockstep", "realtime"],
        default="lockstep",
        help="lockstep: wait for each ACT (deterministic); realtime: run on the wall clock like a robot "
        "(default: lockstep)",
    )
    p.add_argument(
        "--rate", type=float, default=None, metavar="HZ",
        help="realtime: control rate, rescaling the physics timestep (default: the environment's own rate)",
    )
    p.add_argument(
        "--duration", type=float, default=None, metavar="S", help="realtime: stop after S seconds of session time"
    )
    p.add_argument(
        "--act-timeout", type=float, default=None, metavar="S",
        help="realtime: go safe when no ACT came for S seconds (default: 5 control periods, at least 0.02)",
    )
    p.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="stop after N episodes (default: until the controller leaves)",
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed of the run (default: 0)")
    p.add_argument(
        "--num-envs", type=int, default=1, metavar="P", help="environments served at once (default: 1)"
    )
    p.add_argument(
        "--env-threads", type=int, choices=[1, 2], metavar="T",
        help="threads stepping the environments of --num-envs P (MuJoCo releases the GIL, and in lockstep the "
        "controller waits meanwhile; default: 2 from 4 environments up on a 2+ core machine, else 1)",
    )
    p.add_argument(
        "--seeding",
        choices=["first", "episode"],
        default=None,
        help="first: seed the first reset only; episode: every episode from (seed, episode index) "
        "(default: first for one environment, episode for several)",
    )
    p.add_argument(
        "--controller-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="give up on a silent controller after S seconds",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=None,
        metavar="S",
        help="give up if no controller says HELLO within S seconds",
    )
    p.add_argument(
        "--env-arg",
        type=_env_arg,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="passed to gymnasium.make (JSON values)",
    )
    p.add_argument("--results", metavar="PATH", help="write episode returns/lengths and timing as JSON")
    p.add_argument(
        "--events", metavar="PATH",
        help="append one JSON line per finished episode to PATH as it ends (index, return, length, flags, slot, "
        "seed), for a process following the run",
    )
    p.add_argument(
        "--spin-us",
        type=int,
        default=0,
        metavar="US",
        help="lockstep: busy-poll each ACT this long before blocking; realtime: busy-wait this long before "
        "each tick (default 200)",
    )
    p.add_argument(
        "--stage-times", metavar="PATH", help="write the raw per-tick stage durations (.npz, nanoseconds)"
    )
    p.add_argument(
        "--curve-keys",
        metavar="DIR",
        help="encrypt and authenticate with CURVE: DIR from `policyrt keys generate` (server.key_secret, "
        "authorized_clients/); only the controllers authorized there get through",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow binding an address reachable from other machines without --curve-keys",
    )
    p.set_defaults(handler=handle)
    return p


def handle(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    from policyrt.session_control import release_global_context

    try:
        return _handle(args)
    finally:
        release_global_context()  # the final BYE leaves before the process exits


def _handle(args: argparse.Namespace) -> int:
    from policyrt.controllers.auth import check_endpoint, load_server

    if args.mode != "realtime" and (args.rate is not None or args.duration is not None or args.act_timeout is not None):
        print("policyrt sim serve: --rate, --duration and --act-timeout need --mode realtime", file=sys.stderr)
        return 2
    try:  # AuthError is a ValueError: refused endpoints and missing keys are one line, exit 2.
        check_endpoint(
            args.bind, secured=bool(args.curve_keys), insecure=args.insecure, what="--bind", how="--curve-keys DIR"
        )
        curve = load_server(args.curve_keys) if args.curve_keys else None
    except ValueError as err:
        print(f"policyrt sim serve: {err}", file=sys.stderr)
        return 2
    return _serve_realtime(args, curve) if args.mode == "realtime" else _serve_lockstep(args, curve)


def _serve_lockstep(args, curve=None) -> int:
    from policyrt.sim.lockstep_driver import format_result, serve

    return _run_server(
        serve,
        format_result,
        args,
        curve,
        spin_us=args.spin_us,
        num_envs=args.num_envs,
        seeding=args.seeding,
        stage_times_path=args.stage_times,
        env_threads=args.env_threads,
    )


def _serve_realtime(args, curve=None) -> int:
    from policyrt.sim.realtime_driver import format_realtime_result, serve_realtime

    if args.num_envs != 1 or args.seeding not in (None, "first") or args.stage_times:
        print(
            "policyrt sim serve: --mode realtime serves one environment per endpoint and takes neither "
            "--num-envs, --seeding episode nor --stage-times; start one server per robot",
            file=sys.stderr,
        )
        return 2
    if args.rate is not None and not args.rate > 0:
        print(f"policyrt sim serve: --rate must be > 0, got {args.rate}", file=sys.stderr)
        return 2
    return _run_server(
        serve_realtime,
        format_realtime_result,
        args,
        curve,
        rate_hz=args.rate,
        duration_s=args.duration,
        act_timeout_s=args.act_timeout,
        spin_us=args.spin_us or 200.0,
    )


def _run_server(serve, format_result, args, curve, **mode_kwargs) -> int:
    """Run one mode's `serve` with the options both modes share; print its result; the exit status."""
    from policyrt.sim.robot import FAILED_STOPS

    try:  # serve refuses impossible layouts (P < 1, P > 1 with seeding 'first') before binding
        with _episode_events(args) as on_episode:
            result = serve(
                args.env,
                args.bind,
                episodes=args.episodes,
                seed=args.seed,
                controller_timeout_s=args.controller_timeout,
                connect_timeout_s=args.connect_timeout,
                results_path=args.results,
                env_kwargs=dict(args.env_arg),
                curve=curve,
                on_episode=on_episode,
                **mode_kwargs,
            )
    except ValueError as err:
        print(f"policyrt sim serve: {err}", file=sys.stderr)
        return 2
    print(format_result(result), flush=True)
    return 1 if result.stop_reason in FAILED_STOPS else 0


def _episode_events(args):
    """--events PATH: the sim server's on_episode callback writing them (a no-op context without it)."""
    if not args.events:
        return contextlib.nullcontext()
    from policyrt.sim.episode_events import EpisodeEventWriter

    return EpisodeEventWriter(args.events)
