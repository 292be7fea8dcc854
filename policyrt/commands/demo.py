"""`policyrt demo`: the shipped pendulum bundle balancing in closed loop, two processes over ipc."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "inverted-pendulum-xlstm.policy"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="closed-loop demo: sim server + controller processes, shipped pendulum bundle",
        description="Start a MuJoCo sim server process and a controller process (ONNX Runtime on CPU, "
        "ipc transport), run episodes of the shipped xLSTM pendulum bundle, and print each episode's "
        "return beside the LQR expert's on the same seeds, and the latency of every stage.",
    )
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE), help="bundle to run (default: the shipped pendulum bundle)")
    p.add_argument("--episodes", type=int, default=5, help="episodes (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first reset")
    p.add_argument("--backend", default="onnxruntime", help="runtime backend (default onnxruntime)")
    p.set_defaults(handler=handle)
    return p


def expert_returns(env_id: str, episodes: int, seed: int) -> list[float]:
    """The LQR expert on the server's seeding scheme: seed the first reset, continue the RNG after."""
    import gymnasium as gym
    import numpy as np

    from policyrt.sim.collect import run_episode
    from policyrt.sim.experts import make_expert

    env = gym.make(env_id)
    expert = make_expert("lqr", env)
    rng = np.random.default_rng(0)
    returns = [run_episode(env, expert, rng, 0.0, seed=seed if i == 0 else None).total_return for i in range(episodes)]
    env.close()
    return returns


def handle(args) -> int:
    from policyrt.bundle import open_bundle
    from policyrt.controllers.timing import format_table

    from ._procs import closed_loop

    manifest = open_bundle(args.bundle).manifest
    env_id = manifest.env_id or "InvertedPendulum-v5"
    print(f"demo: {manifest.name} ({manifest.kind}) on {env_id}, {args.episodes} episodes, backend {args.backend}, ipc")
    server, controller = closed_loop(args.bundle, env_id, args.episodes, seed=args.seed, backend=args.backend)
    expert = expert_returns(env_id, args.episodes, args.seed)
    print(f"\n{'episode':>7}  {'policy':>8}  {'expert':>8}  steps")
    policy_returns = [e["episode_return"] for e in server["episodes"]]
    for i, (ep, ref) in enumerate(zip(server["episodes"], expert)):
        print(f"{i:>7}  {ep['episode_return']:>8.1f}  {ref:>8.1f}  {ep['length']}")
    print("\ncontroller stages (us):")
    print(format_table(controller["timing"]))
    print("\nrobot side (us):")
    print(format_table(server["timing"]))
    ok = all(r >= 0.95 * e for r, e in zip(policy_returns, expert))
    print("\nresult: " + ("the policy matches the expert" if ok else "the policy falls short of the expert"))
    return 0 if ok else 1
