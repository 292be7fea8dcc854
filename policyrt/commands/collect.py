"""`policyrt sim collect`: roll a scripted expert in MuJoCo and save a demonstration dataset."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "collect",
        help="collect expert demonstrations from a MuJoCo environment",
        description="Roll a scripted expert (LQR on the finite-differenced environment step) and write "
        "DIR/dataset.json + DIR/episodes.npz. Labels are the expert's clean actions; --action-noise "
        "perturbs only the applied action, so the data covers states off the expert's path.",
        epilog="example:\n  policyrt sim collect --env InvertedPendulum-v5 --expert lqr --episodes 40 "
        "--action-noise 0.5 --out data/pendulum",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--env", default="InvertedPendulum-v5", help="Gymnasium MuJoCo v5 environment id")
    p.add_argument("--expert", default="lqr", help="scripted expert (lqr)")
    p.add_argument("--episodes", type=int, default=40, help="episodes to collect")
    p.add_argument("--action-noise", type=float, default=0.0, help="std of Gaussian noise on the applied action")
    p.add_argument("--seed", type=int, default=0, help="seed of the episode resets and the noise")
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.set_defaults(handler=handle)
    return p


def handle(args) -> int:
    from policyrt.sim.collect import CollectConfig, collect, summary

    cfg = CollectConfig(env_id=args.env, expert=args.expert, episodes=args.episodes,
                        action_noise=args.action_noise, seed=args.seed)
    dataset = collect(cfg, out=args.out, command=args.command_line)
    print(f"{args.out}: {summary(dataset)}")
    return 0
