"""CURVE authentication and the loopback policy (controllers/auth.py, policyrt keys, sim serve
--curve-keys), over real sockets: a peer without the right keys never completes the handshake,
so not one of its frames reaches the other side's application."""

from __future__ import annotations

import dataclasses
import stat
import subprocess
import sys

import numpy as np
import pytest
import zmq
from wire_helpers import PATIENCE_S, free_tcp_endpoint, python_env, reap_processes, start_sim_server
from zmq.utils.monitor import recv_monitor_message

from policyrt.cli import main
from policyrt.controllers import auth
from policyrt.link import Link
from policyrt.protocol import Encoder, MsgType, ObsFlag

FAILED = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
}


@pytest.fixture(autouse=True)
def _reap():
    yield
    reap_processes()


@pytest.fixture
def keys(tmp_path):
    """Two independent key directories: the real deployment's and a stranger's."""
    good, stranger = tmp_path / "keys", tmp_path / "stranger"
    assert main(["keys", "generate", str(good)]) == 0
    assert main(["keys", "generate", str(stranger)]) == 0
    return good, stranger


def test_keys_generate_writes_private_secrets_and_never_overwrites(keys, capsys):
    good, _ = keys
    for name in ("server", "client"):
        assert stat.S_IMODE((good / f"{name}.key_secret").stat().st_mode) == 0o600
        assert stat.S_IMODE((good / f"{name}.key").stat().st_mode) == 0o644
    assert (good / "authorized_clients" / "client.key").read_text() == (good / "client.key").read_text()
    server_before = (good / "server.key_secret").read_text()
    assert main(["keys", "generate", str(good)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["keys", "generate", str(good), "--client", "operator"]) == 0
    assert (good / "server.key_secret").read_text() == server_before  # the robot's keys stay
    assert (good / "authorized_clients" / "operator.key").exists()


def test_missing_keys_are_named():
    with pytest.raises(auth.AuthError, match="policyrt keys generate"):
        auth.load_client("/nonexistent/keys")
    with pytest.raises(auth.AuthError, match="server.key_secret"):
        auth.load_server("/nonexistent/keys")


@pytest.mark.parametrize(
    "endpoint, loopback",
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.2.1:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/robot.sock", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://192.168.1.20:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://robot.local:5555", False),
        ("tcp://127.0.0.1;10.0.0.5:5555", False),
    ],
)
def test_loopback_policy(endpoint, loopback):
    assert auth.is_loopback(endpoint) is loopback
    if loopback:
        auth.check_endpoint(endpoint, secured=False, insecure=False, what="x", how="y")
    else:
        with pytest.raises(auth.AuthError, match="--insecure"):
            auth.check_endpoint(endpoint, secured=False, insecure=False, what="x", how="y")
        auth.check_endpoint(endpoint, secured=True, insecure=False, what="x", how="y")
        auth.check_endpoint(endpoint, secured=False, insecure=True, what="x", how="y")


def _connect_with_monitor(endpoint: str, curve) -> tuple[zmq.Socket, zmq.Socket]:
    """A DEALER set up like Link's, watched by a monitor from before its connect, so no
    handshake event is missed."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 1000)
    monitor = sock.get_monitor_socket()
    if curve is not None:
        curve.configure(sock, bind=False, context=zmq.Context.instance())
    sock.connect(endpoint)
    return sock, monitor


def _wait_event(monitor: zmq.Socket, wanted: set[int]) -> int:
    while monitor.poll(int(PATIENCE_S * 1000)):
        event = recv_monitor_message(monitor)["event"]
        if event in wanted:
            return event
    raise AssertionError("no handshake result within the patience limit")


def _close(sock, monitor) -> None:
    sock.disable_monitor()
    monitor.close(linger=0)
    sock.close(linger=0)


def test_clients_without_the_right_keys_never_reach_the_robot(keys):
    good, stranger = keys
    endpoint = free_tcp_endpoint()
    authorized = auth.load_client(good)
    # The stranger knows the robot's public key (it is public) but is not in authorized_clients/.
    unlisted = dataclasses.replace(auth.load_client(stranger), server_public=authorized.server_public)
    impostors = {
        "unlisted client key": (unlisted, zmq.EVENT_HANDSHAKE_FAILED_AUTH),  # refused by the ZAP handler
        "wrong server key": (auth.load_client(stranger), None),  # cannot even talk to this server
        "no keys": (None, None),  # plain ZeroMQ against a CURVE server
    }
    enc = Encoder(act_dim=1)
    with Link(endpoint, bind=True, curve=auth.load_server(good)) as robot:
        for name, (curve, expected) in impostors.items():
            sock, monitor = _connect_with_monitor(endpoint, curve)
            # An e-stop clear and an action, queued for whenever the connection would come up.
            sock.send(enc.control(MsgType.CLEAR), zmq.NOBLOCK)
            sock.send(enc.act(np.zeros(1, np.float32), ack=1), zmq.NOBLOCK)
            event = _wait_event(monitor, FAILED)
            assert expected is None or event == expected, name
            _close(sock, monitor)
        with Link(endpoint, bind=False, curve=authorized) as controller:
            controller.send(Encoder().control(MsgType.HELLO))
            first = robot.recv(PATIENCE_S)
            assert first is not None and first.type is MsgType.HELLO  # nothing of the impostors before it
            assert robot.recv(0) is None  # and nothing after


def test_a_robot_with_the_wrong_server_key_cannot_send_observations(keys):
    """The controller pins the robot's public key: an impostor robot bound on the endpoint (with
    its own server keys, even authorizing the controller) gets no observation through."""
    good, stranger = keys
    (stranger / "authorized_clients" / "controller.key").write_bytes((good / "client.key").read_bytes())
    endpoint = free_tcp_endpoint()
    with Link(endpoint, bind=True, curve=auth.load_server(stranger)) as impostor:
        impostor.send(Encoder(obs_dim=4).obs(np.zeros(4, np.float32), 0.0, flags=int(ObsFlag.RESET)))
        sock, monitor = _connect_with_monitor(endpoint, auth.load_client(good))
        try:
            _wait_event(monitor, FAILED)
            with pytest.raises(zmq.Again):
                sock.recv(zmq.NOBLOCK)
        finally:
            _close(sock, monitor)


@pytest.mark.slow
def test_sim_server_with_curve_keys_serves_only_authorized_controllers(keys):
    good, stranger = keys
    endpoint = free_tcp_endpoint()
    server = start_sim_server(endpoint, "--curve-keys", str(good), "--episodes", "1")
    unlisted = dataclasses.replace(
        auth.load_client(stranger), server_public=auth.load_client(good).server_public
    )
    sock, monitor = _connect_with_monitor(endpoint, unlisted)
    sock.send(Encoder().control(MsgType.HELLO), zmq.NOBLOCK)
    assert _wait_event(monitor, FAILED) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    _close(sock, monitor)
    with Link(endpoint, bind=False, curve=auth.load_client(good)) as controller:
        enc = Encoder(act_dim=1)
        controller.send(enc.control(MsgType.HELLO))
        spec = controller.recv(PATIENCE_S)
        assert spec is not None and spec.type is MsgType.SPEC and spec.ack == enc.last_seq
        controller.send(enc.control(MsgType.BYE))
    out, err = server.communicate(timeout=PATIENCE_S)
    assert "controller_left" in out, err
    assert "protocol errors: none; e-stops: 0" in out  # nothing of the impostor's arrived


def test_sim_server_refuses_a_non_loopback_bind_without_keys():
    port = free_tcp_endpoint().rsplit(":", 1)[1]
    cmd = [sys.executable, "-m", "policyrt.cli", "sim", "serve", "--env", "InvertedPendulum-v5"]
    proc = subprocess.run(
        [*cmd, "--bind", f"tcp://0.0.0.0:{port}"],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--curve-keys" in proc.stderr and "--insecure" in proc.stderr and "0.0.0.0" in proc.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["estop", "tcp://192.0.2.7:5555"], "--curve-keys DIR"),
        (
            ["run", "bundles/inverted-pendulum-xlstm.policy", "--connect", "tcp://192.0.2.7:5555"],
            "--curve-keys",
        ),
        (
            [
                "run",
                "bundles/inverted-pendulum-xlstm.policy",
                "--mode",
                "realtime",
                "--connect",
                "ipc:///tmp/x",
                "--telemetry",
                "tcp://0.0.0.0:6000",
            ],
            "--telemetry tcp://0.0.0.0:6000",
        ),
    ],
)
def test_run_and_estop_refuse_endpoints_off_loopback_without_keys(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "--insecure" in err


def test_key_directories_are_private_whatever_the_umask(tmp_path):
    """Under `umask 000` mkdir makes 0777 directories: any local user could then add an authorized
    client key or swap server.key. Every directory written is 0700, every secret 0600."""
    key_dir = tmp_path / "deploy" / "keys"
    proc = subprocess.run(
        [sys.executable, "-c", "import os, sys; os.umask(0); from policyrt.cli import main; sys.exit(main(sys.argv[1:]))",
         "keys", "generate", str(key_dir)],
        capture_output=True, text=True, env=python_env(), timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for d in (tmp_path / "deploy", key_dir, key_dir / "authorized_clients"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    for name in ("server", "client"):
        assert stat.S_IMODE((key_dir / f"{name}.key_secret").stat().st_mode) == 0o600
        assert stat.S_IMODE((key_dir / f"{name}.key").stat().st_mode) == 0o644
    assert stat.S_IMODE((key_dir / "authorized_clients" / "client.key").stat().st_mode) == 0o644


def test_an_existing_key_directory_others_can_write_is_refused_in_one_line(tmp_path, capsys):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert main(["keys", "generate", str(shared)]) == 2
    err = capsys.readouterr().err
    assert "writable by other users (mode 0777)" in err and f"chmod go-w {shared}" in err
    assert len(err.strip().splitlines()) == 1 and not list(shared.iterdir())
