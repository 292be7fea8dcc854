"""`policyrt sim collect`: roll a scripted expert in MuJoCo and save a demonstration dataset."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "collect",
        help="collect expert demonstrations from a MuJoCo environment",
        description="Roll a scripted expert (LQR on the finite-differenced environment step, or inverse "
        "kinematics + PD for Reacher) and write a dataset to DIR: a Minari dataset (default) or npz, plus "
        "DIR/dataset.json with how it was made. Each step stores the applied action and the expert's clean "
        "action for it. Quality levels, assigned round-robin over episodes: --action-noise adds Gaussian "
        "noise (states off the expert's path), --expert-gain scales the expert's action (a weaker, "
        "deterministic controller: the low-return behaviour a return-conditioned policy learns to "
        "reproduce), --random-mix blends in a uniformly random action. Prints a summary of the returns "
        "at the end. SIGINT or SIGTERM ends it after the episode being played and keeps the episodes "
        "played until then (exit 0).",
        epilog="examples:\n  policyrt sim collect --env InvertedPendulum-v5 --expert lqr --episodes 40 "
        "--action-noise 0.5 --out data/pendulum\n"
        "  policyrt sim collect --env InvertedDoublePendulum-v5 --episodes 80 --action-noise 0,0.1,0,0 "
        "--expert-gain 1,1,0.6,0.3 --out data/double-pendulum   # expert, noisy expert, two weaker controllers",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--env", default="InvertedPendulum-v5", help="Gymnasium MuJoCo v5 environment id")
    p.add_argument("--expert", default="lqr", help="scripted expert: lqr (InvertedPendulum-v5, InvertedDoublePendulum-v5) or ik (Reacher-v5)")
    p.add_argument("--episodes", type=int, default=40, help="episodes to collect")
    p.add_argument("--action-noise", type=_levels, default=(0.0,), metavar="STD[,STD...]",
                   help="std of Gaussian noise on the applied action; several levels (e.g. 0,0.5,1) mix "
                   "expert, medium and poor episodes, assigned round-robin")
    p.add_argument("--random-mix", type=_mix_levels, default=(0.0,), metavar="W[,W...]",
                   help="weight of a uniformly random action blended into the expert's (0: expert, 1: random); "
                   "several levels assigned round-robin, paired with --action-noise by episode index")
    p.add_argument("--expert-gain", type=_levels, default=(1.0,), metavar="G[,G...]",
                   help="scale of the expert's action (1: the expert, 0.3: a weak controller); several levels "
                   "assigned round-robin, paired with the other levels by episode index")
    p.add_argument("--format", choices=["minari", "npz"], default="minari",
                   help="minari (default; readable by minari.load_dataset with MINARI_DATASETS_PATH=OUT) or npz")
    p.add_argument("--seed", type=int, default=0, help="seed of the episode resets and the noise")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.set_defaults(handler=handle)
    return p


def _levels(text: str) -> tuple[float, ...]:
    try:
        levels = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected STD or STD,STD,..., got {text!r}") from None
    if any(v < 0 for v in levels):
        raise argparse.ArgumentTypeError(f"noise levels must be >= 0, got {text!r}")
    return levels


def _mix_levels(text: str) -> tuple[float, ...]:
    levels = _levels(text)
    if any(v > 1 for v in levels):
        raise argparse.ArgumentTypeError(f"random-mix weights must lie in [0, 1], got {text!r}")
    return levels


def handle(args) -> int:
    from policyrt.sim.collect import CollectConfig, collect, summary
    from policyrt.stopping import STOP

    cfg = CollectConfig(env_id=args.env, expert=args.expert, episodes=args.episodes,
                        action_noise=args.action_noise, random_mix=args.random_mix,
                        expert_gain=args.expert_gain, seed=args.seed, format=args.format)
    dataset = collect(cfg, out=args.out, command=args.command_line, stop=STOP)
    if dataset is None:
        print(f"policyrt sim collect: interrupted by {STOP.reason} before the first episode ended; nothing was written",
              file=sys.stderr)
        return 0
    if len(dataset.episodes) < cfg.episodes:
        print(f"policyrt sim collect: interrupted by {STOP.reason} after {len(dataset.episodes)} of {cfg.episodes} "
              "episodes; those are kept", file=sys.stderr)
    print(f"{args.out}: {summary(dataset)}")
    return 0
