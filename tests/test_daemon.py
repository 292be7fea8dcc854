"""`policyrt serve` as a real process against robots on real sockets: readiness and watchdog over
a real notify socket, hot reload (good, corrupted and drifting bundles), SIGTERM, --check, and
the loopback policy. Nothing here asserts on how long anything took: waits are on log lines,
notifications and counters, with a patience limit against hangs only."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
from daemon_helpers import (
    DaemonProcess,
    NotifyListener,
    StreamingRobot,
    copy_bundle,
    corrupt_bundle,
    drifted_bundle,
)
from realtime_helpers import wait_until
from wire_helpers import (
    PATIENCE_S,
    free_tcp_endpoint,
    ipc_endpoint,
    python_env,
    reap_processes,
    start_sim_server,
)

from policyrt.cli import main as main_cli

ROOT = Path(__file__).resolve().parents[1]
XLSTM = ROOT / "bundles" / "inverted-pendulum-xlstm.policy"
DT = ROOT / "bundles" / "inverted-pendulum-dt.policy"
FALLBACK = 1  # ACT flag bit (docs/PROTOCOL.md section 4)


@pytest.fixture(autouse=True)
def _reap():
    yield
    reap_processes()


def write_config(path: Path, bundle: Path, robots: list[str], extra: str = "") -> Path:
    robots_toml = ", ".join(f'"{r}"' for r in robots)
    path.write_text(f'bundle = "{bundle}"\nrobots = [{robots_toml}]\nrate_hz = 50\n{extra}')
    return path


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "policyrt.cli", "serve", *args],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=PATIENCE_S,
    )


@pytest.mark.slow
def test_daemon_serves_two_robots_reloads_and_stops_safely(tmp_path):
    bundles = tmp_path / "bundles"
    running = copy_bundle(XLSTM, bundles / "xlstm.policy")
    flight, telemetry = tmp_path / "flight", ipc_endpoint()
    extra = f'[flight_recorder]\ndir = "{flight}"\nticks = 64\n[telemetry]\npub = "{telemetry}"\n'
    config = write_config(tmp_path / "controller.toml", running, [ipc_endpoint(), ipc_endpoint()], extra)
    robots = [StreamingRobot(ep) for ep in _robots(config)]
    notify = NotifyListener()
    notify.start()
    daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "100000"})
    try:
        # Readiness waits for every robot: with one robot up the loop ticks and controls it,
        # but systemd hears nothing yet.
        robots[0].start()
        wait_until(lambda: robots[0].act_count() >= 10, "the first robot gets actions")
        assert not [m for m in notify.pending() if m.get("READY") == "1"]
        robots[1].start()
        assert notify.wait_for("READY")["STATUS"].startswith("serving 2 robot(s)")
        for _ in range(3):
            notify.wait_for("WATCHDOG")  # pings from the tick hook while ticks advance

        # Telemetry snapshots on the PUB socket; SIGUSR1 dumps the flight recorder.
        snap = _telemetry_snapshot(telemetry)
        assert snap["robots"] == _robots(config) and snap["counters"]["robots_connected"] == 2
        daemon.proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: any(flight.glob("*sigusr1*.npz")), "a flight recorder dump")

        # A corrupted bundle and one that no longer matches its parity record: both refused,
        # the running one keeps going.
        log_at = len(daemon.lines)
        for name, make, reason in [
            ("corrupt.policy", corrupt_bundle, "sha256 does not match"),
            ("drifted.policy", drifted_bundle, "fails verification"),
        ]:
            write_config(config, make(XLSTM, bundles / name), _robots(config), extra)
            daemon.proc.send_signal(signal.SIGHUP)
            assert "RELOADING" in notify.wait_for("RELOADING")
            log_at, line = daemon.wait_log("reload refused, the running bundle stays", log_at)
            assert reason in line
            log_at += 1
        before = [r.act_count() for r in robots]
        notify.wait_for("WATCHDOG")
        wait_until(lambda: all(r.act_count() > n + 10 for r, n in zip(robots, before)), "still controlling")
        # The old policy still acts (a loaded machine may add a stale-observation fallback here
        # and there; the policy's own actions must be among them).
        assert all(any(f & FALLBACK == 0 for f, _ in r.acts_since(n)) for r, n in zip(robots, before))

        # A good bundle (the DT policy): verified off the loop, swapped at the next tick boundary.
        write_config(config, copy_bundle(DT, bundles / "dt.policy"), _robots(config), extra)
        daemon.proc.send_signal(signal.SIGHUP)
        reloading = notify.wait_for("RELOADING")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        _, requested = daemon.wait_log("swap requested after tick", log_at)
        _, swapped = daemon.wait_log("swapped in the new session", log_at)
        requested_tick = int(re.search(r"after tick (\d+)", requested).group(1))
        swap_tick = int(re.search(r"tick (\d+): swapped", swapped).group(1))
        # The swap lands at the first tick boundary after the request: the next tick, unless the
        # scheduler skipped tick numbers after an overrun (checked against the count below). The
        # tick is read right after the request, so a reload thread descheduled in between can
        # only make the difference smaller.
        late = swap_tick - requested_tick
        assert notify.wait_for("READY")  # reload finished
        before = [r.act_count() for r in robots]
        wait_until(
            lambda: all(r.act_count() > n + 10 for r, n in zip(robots, before)), "controlling after the swap"
        )

        # SIGTERM: every robot gets the safe action (flagged FALLBACK) and a BYE; exit 0.
        daemon.proc.send_signal(signal.SIGTERM)
        code, out = daemon.finish()
        assert code == 0, "\n".join(daemon.lines)
        notify.wait_for("STOPPING")
        for robot in robots:
            # The safe action is the last ACT; on its own socket it may arrive just after the BYE.
            wait_until(lambda r=robot: r.byes >= 1 and r.last_act()[0] & FALLBACK, "BYE and the safe action")
            assert robot.last_act()[1].tolist() == [0.0]
        assert "stopped by SIGTERM" in out and "reloads: 1 swapped, 2 refused" in out
        skipped = int(re.search(r"skipped ticks: (\d+)", out).group(1))
        assert late <= 1 + skipped, (requested, swapped, skipped)
        assert "flight recorder: 1 dump(s) on SIGUSR1, 1 file(s)" in out
    finally:
        daemon.kill()
        for robot in robots:
            if robot.is_alive():
                robot.stop()
        notify.close()


def _telemetry_snapshot(endpoint: str) -> dict:
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVTIMEO, int(PATIENCE_S * 1000))
    sub.connect(endpoint)
    try:
        return json.loads(sub.recv())
    finally:
        sub.close(linger=0)


def _robots(config: Path) -> list[str]:
    from policyrt.controllers.config import load_config

    return list(load_config(config).robots)


def test_check_passes_a_good_config_without_connecting(tmp_path):
    config = write_config(tmp_path / "c.toml", XLSTM, ["tcp://127.0.0.1:1"])  # nothing listens there
    proc = serve("--config", str(config), "--check")
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout and "parity 256 steps passed" in proc.stdout


def test_check_refuses_bad_bundles_and_configs(tmp_path):
    for bundle, needle in [
        (corrupt_bundle(XLSTM, tmp_path / "corrupt.policy"), "sha256 does not match"),
        (drifted_bundle(XLSTM, tmp_path / "drifted.policy"), "fails verification"),
        (tmp_path / "missing.policy", "no such bundle"),
    ]:
        proc = serve("--config", str(write_config(tmp_path / "c.toml", bundle, ["ipc:///tmp/x"])), "--check")
        assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    proc = serve("--config", str(write_config(tmp_path / "c.toml", XLSTM, ["ipc:///tmp/x"], "rate = 5\n")))
    assert proc.returncode == 2 and "unknown key 'rate'" in proc.stderr
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("not a dataset")
    extra = f'[recording]\ndataset = "{tmp_path / "notes"}"\n'  # refused at start, not at the stop
    proc = serve("--config", str(write_config(tmp_path / "c.toml", XLSTM, ["ipc:///tmp/x"], extra)), "--check")
    assert proc.returncode == 2 and "[recording] dataset" in proc.stderr and "not a dataset" in proc.stderr
    proc = serve("--config", str(write_config(tmp_path / "c.toml", XLSTM, ["ipc:///tmp/x"], "threads = 0\n")))
    assert proc.returncode == 2 and "threads = 0 is not allowed" in proc.stderr
    proc = serve(
        "--config", str(write_config(tmp_path / "c.toml", XLSTM, ["ipc:///tmp/x"], 'backend = "torch"\nthreads = 2\n')),
        "--check",
    )
    assert proc.returncode == 2 and "applies to ONNX Runtime only" in proc.stderr, proc.stderr


def test_daemon_records_episodes_as_run_does(tmp_path):
    """[recording] dataset: the same episode recorder as `run --record-episodes`, written at SIGTERM."""
    from policyrt.episodes import load_dataset

    endpoint, dataset = ipc_endpoint(), tmp_path / "episodes"
    config = write_config(tmp_path / "c.toml", XLSTM, [endpoint], f'[recording]\ndataset = "{dataset}"\n')
    robot = StreamingRobot(endpoint)
    daemon = DaemonProcess(config)
    try:
        robot.start()
        wait_until(lambda: robot.act_count() >= 20, "the robot gets actions")
        daemon.proc.send_signal(signal.SIGTERM)
        code, out = daemon.finish()
        assert code == 0 and "stopped by SIGTERM" in out, "\n".join(daemon.lines)
    finally:
        daemon.kill()
        robot.stop()
    (episode,) = load_dataset(dataset).episodes  # the robot never ends one: cut by the stop
    assert len(episode) >= 10 and episode.truncations[-1] and episode.observations.shape[1] == 4
    assert load_dataset(dataset).meta["command"] == f"policyrt serve --config {config}"


def test_endpoints_off_loopback_need_keys_or_insecure(tmp_path):
    config = write_config(tmp_path / "c.toml", XLSTM, ["tcp://192.0.2.10:5555"])
    proc = serve("--config", str(config), "--check")
    assert proc.returncode == 2
    assert (
        "tcp://192.0.2.10:5555" in proc.stderr and "[auth] keys" in proc.stderr and "insecure" in proc.stderr
    )
    assert serve("--config", str(config), "--check", "--insecure").returncode == 0
    keys = tmp_path / "keys"
    assert (
        subprocess.run(
            [sys.executable, "-m", "policyrt.cli", "keys", "generate", str(keys)],
            capture_output=True,
            env=python_env(),
        ).returncode
        == 0
    )
    write_config(config, XLSTM, ["tcp://192.0.2.10:5555"], f'[auth]\nkeys = "{keys}"\n')
    assert serve("--config", str(config), "--check").returncode == 0
    write_config(config, XLSTM, ["ipc:///tmp/x"], '[telemetry]\npub = "tcp://0.0.0.0:5600"\n')
    proc = serve("--config", str(config), "--check")
    assert proc.returncode == 2 and "[telemetry] pub tcp://0.0.0.0:5600" in proc.stderr


def _example_config(path: Path, **values: str) -> Path:
    """deploy/controller.toml with some `key = value` lines replaced (values are TOML)."""
    text = (ROOT / "deploy" / "controller.toml").read_text()
    for key, value in values.items():
        text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, count=1, flags=re.M)
        assert n == 1, key
    path.write_text(text)
    return path


def _estop(endpoint: str, keys: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "policyrt.cli",
        "estop",
        endpoint,
        "--curve-keys",
        str(keys),
        "--timeout",
        "3",
    ]
    return subprocess.run(
        [*cmd, *extra], capture_output=True, text=True, env=python_env(), timeout=PATIENCE_S
    )


@pytest.mark.slow
def test_example_config_drives_the_realtime_sim_over_curve(tmp_path):
    """The shipped example config (paths and endpoints swapped in) against the real-time sim
    server over tcp with CURVE keys on every link; operators' e-stops need the right keys."""
    keys, stranger = tmp_path / "keys", tmp_path / "stranger"
    for d in (keys, stranger):
        assert main_cli(["keys", "generate", str(d)]) == 0
    # A stranger that knows the robot's public key but is not authorized.
    (stranger / "server.key").write_bytes((keys / "server.key").read_bytes())
    endpoint, telemetry = free_tcp_endpoint(), ipc_endpoint()
    config = _example_config(
        tmp_path / "controller.toml",
        bundle=f'"{XLSTM}"',
        robots=f'["{endpoint}"]',
        dir=f'"{tmp_path / "flight"}"',
        pub=f'"{telemetry}"',
        keys=f'"{keys}"',
    )
    sim = start_sim_server(endpoint, "--mode", "realtime", "--curve-keys", str(keys))
    notify = NotifyListener()
    notify.start()
    daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"})
    try:
        notify.wait_for("READY")
        notify.wait_for("WATCHDOG")
        assert _estop(endpoint, keys).returncode == 0
        at, _ = daemon.wait_log("emergency stop latched")
        # The unauthorized operator's CLEAR never gets a connection: nothing is sent.
        refused = _estop(endpoint, stranger, "--clear")
        assert refused.returncode == 1 and "nothing was sent" in refused.stderr
        assert _telemetry_snapshot(telemetry)["counters"]["estop_latched"] == [True]
        assert _estop(endpoint, keys, "--clear").returncode == 0
        daemon.wait_log("emergency stop cleared", at)
        daemon.proc.send_signal(signal.SIGTERM)
        code, out = daemon.finish()
        assert code == 0, "\n".join(daemon.lines)
        assert "stopped by SIGTERM" in out
        sim_out, sim_err = sim.communicate(timeout=PATIENCE_S)
        assert sim.returncode == 0, sim_err
    finally:
        daemon.kill()
        notify.close()


def test_journald_log_lines_carry_a_priority_and_no_timestamp(monkeypatch, capsys):
    import logging

    from policyrt.controllers.daemon import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
        setup_logging()
        logging.getLogger("policyrt.daemon").warning("reload refused:\nsecond line")
        logging.getLogger("policyrt.daemon").info("ready")
        assert capsys.readouterr().err.splitlines() == [
            "<4>policyrt.daemon: reload refused:",
            "<4>second line",
            "<6>policyrt.daemon: ready",
        ]
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
