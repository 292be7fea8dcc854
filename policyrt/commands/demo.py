"""`policyrt demo`: shipped bundles controlling a MuJoCo robot in closed loop, two processes over ipc."""

from __future__ import annotations

import argparse
from pathlib import Path

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
# Both policy kinds on the double pendulum when those bundles are there; the spine's pendulum otherwise.
PREFERRED = (("double-pendulum-xlstm-small.policy", "double-pendulum-dt-small.policy"), ("inverted-pendulum-xlstm.policy",))


def default_bundles() -> list[str]:
    for group in PREFERRED:
        if all((BUNDLES / name).exists() for name in group):
            return [str(BUNDLES / name) for name in group]
    return [str(BUNDLES / PREFERRED[-1][0])]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "demo",
        help="closed-loop demo: sim server + controller processes on the shipped bundles",
        description="For each bundle, start a MuJoCo sim server process and a controller process (ONNX "
        "Runtime on CPU, ipc transport), run episodes, and print each episode's return beside the scripted "
        "expert's on the same seeds, and the latency of every stage. Default: the xLSTM and the DT bundle "
        "on the double pendulum (the xLSTM pendulum bundle where those are not built).",
    )
    p.add_argument("--bundle", action="append", help="bundle to run (repeat for several; default: see above)")
    p.add_argument("--episodes", type=int, default=5, help="episodes per bundle (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first reset")
    p.add_argument("--backend", default="onnxruntime", help="runtime backend (default onnxruntime)")
    p.set_defaults(handler=handle)
    return p


def expert_returns(env_id: str, episodes: int, seed: int) -> list[float]:
    """The scripted expert on the server's seeding scheme: seed the first reset, continue the RNG after."""
    import gymnasium as gym
    import numpy as np

    from policyrt.sim.collect import run_episode
    from policyrt.sim.experts import expert_for_env, make_expert

    env = gym.make(env_id)
    expert = make_expert(expert_for_env(env_id), env)
    rng = np.random.default_rng(0)
    returns = [
        run_episode(env, expert, rng, 0.0, seed=seed if i == 0 else None).total_return for i in range(episodes)
    ]
    env.close()
    return returns


def run_one(bundle: str, args) -> bool:
    import numpy as np

    from policyrt.bundle import open_bundle
    from policyrt.controllers.timing import format_table
    from policyrt.sim.experts import close_to_expert

    from ._procs import closed_loop

    manifest = open_bundle(bundle).manifest
    env_id = manifest.env_id or "InvertedPendulum-v5"
    print(f"\n=== {manifest.name} ({manifest.kind}) on {env_id}, {args.episodes} episodes, backend {args.backend}, ipc")
    server, controller = closed_loop(bundle, env_id, args.episodes, seed=args.seed, backend=args.backend)
    expert = expert_returns(env_id, args.episodes, args.seed)
    print(f"{'episode':>7}  {'policy':>9}  {'expert':>9}  steps")
    policy_returns = [e["episode_return"] for e in server["episodes"]]
    for i, (ep, ref) in enumerate(zip(server["episodes"], expert)):
        print(f"{i:>7}  {ep['episode_return']:>9.2f}  {ref:>9.2f}  {ep['length']}")
    print("controller stages (us):")
    print(format_table(controller["timing"]))
    print("robot side (us):")
    print(format_table(server["timing"]))
    ok = close_to_expert(float(np.mean(policy_returns)), float(np.mean(expert)))
    print("result: " + ("the policy matches the expert" if ok else "the policy falls short of the expert"))
    return ok


def handle(args) -> int:
    results = [run_one(bundle, args) for bundle in (args.bundle or default_bundles())]
    return 0 if all(results) else 1
