"""Start a sim server and a controller as two real processes and collect their JSON results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def policyrt_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "policyrt.cli", *args]


def closed_loop(bundle: str, env_id: str, episodes: int, endpoint: str | None = None, seed: int = 0,
                backend: str = "auto", spin_us: int = 0, timeout_s: float = 600.0) -> tuple[dict, dict]:
    """Run `policyrt sim serve` and `policyrt run` against each other; returns (server, controller) results."""
    with tempfile.TemporaryDirectory(prefix="policyrt-loop-") as tmp:  # results and the ipc socket
        return _closed_loop(Path(tmp), bundle, env_id, episodes, endpoint, seed, backend, spin_us, timeout_s)


def _closed_loop(work: Path, bundle, env_id, episodes, endpoint, seed, backend, spin_us, timeout_s):
    endpoint = endpoint or f"ipc://{work}/robot.sock"
    server_json, controller_json = work / "server.json", work / "controller.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        policyrt_cmd("sim", "serve", "--env", env_id, "--bind", endpoint, "--episodes", str(episodes),
                     "--seed", str(seed), "--results", str(server_json), "--spin-us", str(spin_us),
                     "--connect-timeout", "60"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    controller = subprocess.Popen(
        policyrt_cmd("run", bundle, "--connect", endpoint, "--episodes", str(episodes), "--backend", backend,
                     "--spin-us", str(spin_us), "--results", str(controller_json)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        c_out, _ = controller.communicate(timeout=timeout_s)
        s_out, _ = server.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        controller.kill()
        server.kill()
        raise RuntimeError(f"closed loop did not finish within {timeout_s:.0f} s") from None
    if controller.returncode != 0 or server.returncode != 0 or not controller_json.exists() or not server_json.exists():
        raise RuntimeError(
            f"closed loop failed (controller exit {controller.returncode}, server exit {server.returncode})\n"
            f"--- controller ---\n{c_out[-3000:]}\n--- server ---\n{s_out[-3000:]}"
        )
    return json.loads(server_json.read_text()), json.loads(controller_json.read_text())
