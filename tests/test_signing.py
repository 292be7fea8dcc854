"""Signed bundles (policyrt/signing.py): signing keys, `policyrt sign`, `--trust DIR` / `trust = DIR`
on verify, the session loaders and the daemon (start, --check, SIGHUP reload). Real key files,
real bundles, the CLI in real subprocesses and a real `policyrt serve` against robots on real
sockets."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from daemon_helpers import DaemonProcess, NotifyListener, StreamingRobot, copy_bundle
from realtime_helpers import wait_until
from wire_helpers import PATIENCE_S, ipc_endpoint, python_env, reap_processes

from policyrt import signing
from policyrt.bundle import open_bundle, pack_bundle, write_manifest

ROOT = Path(__file__).resolve().parents[1]
XLSTM = ROOT / "bundles" / "inverted-pendulum-xlstm.policy"
DT = ROOT / "bundles" / "inverted-pendulum-dt.policy"


@pytest.fixture(autouse=True)
def _reap():
    yield
    reap_processes()


def cli(*args: str, umask: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "policyrt.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=python_env(),
        timeout=PATIENCE_S,
        preexec_fn=None if umask is None else (lambda: os.umask(umask)),
    )


def one_line(proc: subprocess.CompletedProcess) -> str:
    """The refusal of a command that must fail with one line and no traceback."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture
def release(tmp_path):
    """A release key pair, and a trust directory holding its public key (what a board has)."""
    secret, public, key_id = signing.generate_signing_key(tmp_path / "release-keys", "release")
    trust = tmp_path / "trusted"
    trust.mkdir()
    shutil.copyfile(public, trust / "release.pub")
    return secret, trust, key_id


def signed_copy(src: Path, dst: Path, secret: Path) -> Path:
    copy_bundle(src, dst)
    with open_bundle(dst) as bundle:
        signing.sign_bundle(bundle, signing.load_secret_key(secret), signer="test")
    return dst


def rehash(bundle_dir: Path) -> None:
    """Rewrite the manifest's checksums and digest: what a tamperer who knows the format does."""
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest.pop("files")
    write_manifest(bundle_dir, manifest)


def trusted_by(bundle_dir: Path, trust: Path) -> str:
    with open_bundle(bundle_dir) as bundle:
        return signing.check_trusted(bundle, trust)


# --- keys ---


def test_signing_keys_are_private_under_umask_000_and_never_overwritten(tmp_path):
    keys = tmp_path / "new" / "keys"
    proc = cli("keys", "signing", keys, "--name", "release", umask=0)
    assert proc.returncode == 0, proc.stderr
    for directory in (keys, keys.parent):
        assert directory.stat().st_mode & 0o777 == 0o700, directory
    secret, public = keys / "release.secret.pem", keys / "release.pub"
    assert secret.stat().st_mode & 0o777 == 0o600 and public.stat().st_mode & 0o777 == 0o644
    assert secret.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8 PEM
    kind, blob, comment = public.read_text().split()
    assert (kind, comment) == ("ssh-ed25519", "release")
    # The key id printed is the OpenSSH fingerprint of the public key (ssh-keygen -lf prints it).
    fingerprint = base64.b64encode(hashlib.sha256(base64.b64decode(blob)).digest()).decode().rstrip("=")
    assert proc.stdout.splitlines()[-1] == f"key id SHA256:{fingerprint}"
    before = secret.read_bytes(), public.read_bytes()
    again = cli("keys", "signing", keys, "--name", "release")
    assert again.returncode == 2 and "exists already, not overwritten" in one_line(again)
    assert (secret.read_bytes(), public.read_bytes()) == before
    assert not [p for p in keys.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_a_secret_key_others_can_read_is_refused(tmp_path, release):
    secret, _, _ = release
    os.chmod(secret, 0o644)
    proc = cli("sign", copy_bundle(XLSTM, tmp_path / "b.policy"), "--key", secret)
    assert proc.returncode == 2 and f"chmod 600 {secret}" in one_line(proc)


# --- sign, verify --trust ---


def test_sign_then_verify_trust_passes_and_signing_changes_nothing_signed(tmp_path, release):
    secret, trust, key_id = release
    bundle = copy_bundle(XLSTM, tmp_path / "xlstm.policy")
    digest = open_bundle(bundle).digest
    unsigned = cli("verify", bundle, "--trust", trust)
    assert unsigned.returncode == 1 and "not signed by any key in" in one_line(unsigned)
    assert "(signed by: none)" in unsigned.stderr
    proc = cli("sign", bundle, "--key", secret, "--signer", "ci build 412")
    assert proc.returncode == 0, proc.stderr
    assert key_id in proc.stdout and digest in proc.stdout
    assert open_bundle(bundle).digest == digest  # signatures.json is outside the digest
    proc = cli("verify", bundle, "--trust", trust)
    assert proc.returncode == 0, proc.stderr
    assert f"signed by trusted key release (trust directory {trust})" in proc.stdout
    # Signing again with the same key replaces its entry; another key adds its own.
    other, _, other_id = signing.generate_signing_key(tmp_path / "other-keys", "other")
    assert cli("sign", bundle, "--key", secret).returncode == 0
    assert cli("sign", bundle, "--key", other).returncode == 0
    entries = json.loads((bundle / signing.SIGNATURES).read_text())["signatures"]
    assert [e["key_id"] for e in entries] == [key_id, other_id]
    assert all(e["digest"] == digest and e["algorithm"] == "ed25519" and e["signed_at"] for e in entries)
    assert trusted_by(bundle, trust) == "release"


def test_a_packed_bundle_is_refused_for_signing_and_its_signature_travels_inside(tmp_path, release):
    secret, trust, _ = release
    archive = pack_bundle(copy_bundle(XLSTM, tmp_path / "x.policy"), tmp_path / "x.policy.tar")
    proc = cli("sign", archive, "--key", secret)
    assert proc.returncode == 2 and "sign the bundle directory, then pack it" in one_line(proc)
    signed = signed_copy(XLSTM, tmp_path / "s.policy", secret)
    archive = pack_bundle(signed, tmp_path / "s.policy.tar")
    assert trusted_by(archive, trust) == "release"
    proc = cli("verify", archive, "--trust", trust)
    assert proc.returncode == 0 and f"{archive}: signed by trusted key release" in proc.stdout, proc.stderr


# --- what voids a signature ---


def _flip_onnx_byte(bundle: Path) -> None:
    data = bytearray((bundle / "policy.onnx").read_bytes())
    data[-1] ^= 0x01
    (bundle / "policy.onnx").write_bytes(bytes(data))


def _change_manifest_field(bundle: Path) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["target_return"] = float(manifest["target_return"]) + 1.0
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _change_parity(bundle: Path) -> None:
    parity = json.loads((bundle / "parity.json").read_text())
    parity["tolerance"] = 1.0
    (bundle / "parity.json").write_text(json.dumps(parity))


@pytest.mark.parametrize("tamper", [_flip_onnx_byte, _change_manifest_field, _change_parity])
def test_any_change_after_signing_voids_the_signature(tmp_path, release, tamper):
    secret, trust, _ = release
    bundle = signed_copy(XLSTM, tmp_path / "b.policy", secret)
    assert trusted_by(bundle, trust) == "release"
    tamper(bundle)
    rehash(bundle)  # the checksums and the digest agree with the change: only the signature can tell
    with pytest.raises(signing.UntrustedBundle, match=r"signature by release \(SHA256:\S+\) does not match the bundle: "
                       "changed after signing"):
        trusted_by(bundle, trust)


def test_verify_trust_refuses_a_tampered_bundle_in_one_line(tmp_path, release):
    secret, trust, _ = release
    bundle = signed_copy(XLSTM, tmp_path / "b.policy", secret)
    _change_parity(bundle)
    rehash(bundle)
    proc = cli("verify", bundle, "--trust", trust)
    assert proc.returncode == 1 and "changed after signing" in one_line(proc) and str(bundle) in proc.stderr


def test_a_bundle_signed_by_an_unknown_key_is_refused(tmp_path, release):
    _, trust, _ = release
    stranger, _, stranger_id = signing.generate_signing_key(tmp_path / "stranger", "stranger")
    bundle = signed_copy(XLSTM, tmp_path / "b.policy", stranger)
    expected = f"not signed by any key in {trust} (signed by: {stranger_id} (test))"
    with pytest.raises(signing.UntrustedBundle, match=re.escape(expected)):
        trusted_by(bundle, trust)


def test_a_signature_copied_under_a_trusted_key_id_does_not_verify(tmp_path, release):
    """signatures.json is not covered by anything: an entry claiming the trusted key's id but made
    by another key is checked with the trusted key, and fails."""
    secret, trust, key_id = release
    stranger, _, _ = signing.generate_signing_key(tmp_path / "stranger", "stranger")
    bundle = signed_copy(XLSTM, tmp_path / "b.policy", stranger)
    doc = json.loads((bundle / signing.SIGNATURES).read_text())
    doc["signatures"][0]["key_id"] = key_id
    (bundle / signing.SIGNATURES).write_text(json.dumps(doc))
    with pytest.raises(signing.UntrustedBundle, match="does not match the bundle"):
        trusted_by(bundle, trust)
    (bundle / signing.SIGNATURES).write_text("{not json")
    with pytest.raises(signing.UntrustedBundle, match=f"{signing.SIGNATURES}: not readable JSON"):
        trusted_by(bundle, trust)


def test_trust_directory_problems_are_one_line(tmp_path, release):
    secret, trust, _ = release
    bundle = signed_copy(XLSTM, tmp_path / "b.policy", secret)
    proc = cli("verify", bundle, "--trust", tmp_path / "nowhere")
    assert proc.returncode == 1 and "nowhere: no such directory" in one_line(proc)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(signing.UntrustedBundle, match=r"holds no public key \(\*\.pub\)"):
        trusted_by(bundle, empty)
    (empty / "broken.pub").write_text("ssh-ed25519 not-base64\n")
    with pytest.raises(signing.UntrustedBundle, match=r"broken\.pub: not a public key"):
        trusted_by(bundle, empty)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    (empty / "broken.pub").write_bytes(
        rsa_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    with pytest.raises(signing.UntrustedBundle, match=r"broken\.pub: not an Ed25519 public key"):
        trusted_by(bundle, empty)
    os.chmod(trust, 0o777)
    with pytest.raises(signing.UntrustedBundle, match="writable by anyone"):
        trusted_by(bundle, trust)


# --- the commands that load a session ---


def test_session_settings_load_checks_the_signature_before_a_backend_is_made(tmp_path, release):
    from policyrt.controllers.settings import SessionSettings

    secret, trust, _ = release
    with pytest.raises(signing.UntrustedBundle, match="not signed by any key"):
        SessionSettings(trust=trust).load(copy_bundle(XLSTM, tmp_path / "unsigned.policy"))
    session = SessionSettings(trust=trust).load(signed_copy(XLSTM, tmp_path / "signed.policy", secret))
    session.close()


@pytest.mark.parametrize("command, code", [
    (["run", "--connect", "ipc:///tmp/policyrt-nowhere"], 2),
    (["compare", "--reference", XLSTM / "reference"], 1),
    # eval, bench and demo check once, before they start the processes that load the session.
    (["eval", "--env", "InvertedPendulum-v5", "--episodes", "1"], 2),
    (["bench", "--steps", "1"], 2),
])
def test_every_command_that_loads_a_session_refuses_an_unsigned_bundle(tmp_path, release, command, code):
    _, trust, _ = release
    bundle = copy_bundle(XLSTM, tmp_path / "unsigned.policy")
    proc = cli(command[0], bundle, *command[1:], "--trust", trust)
    assert proc.returncode == code and "not signed by any key" in one_line(proc)


def test_demo_checks_every_bundle_before_it_starts(tmp_path, release):
    secret, trust, _ = release
    signed = signed_copy(XLSTM, tmp_path / "signed.policy", secret)
    unsigned = copy_bundle(DT, tmp_path / "unsigned.policy")
    proc = cli("demo", "--bundle", signed, "--bundle", unsigned, "--trust", trust, "--report", tmp_path / "r")
    assert proc.returncode == 2 and f"{unsigned}: not signed by any key" in one_line(proc)
    assert not (tmp_path / "r").exists()  # nothing ran


# --- the daemon ---


def _config(path: Path, bundle: Path, trust: Path, robots: list[str]) -> Path:
    robots_toml = ", ".join(f'"{r}"' for r in robots)
    path.write_text(f'bundle = "{bundle}"\nrobots = [{robots_toml}]\nrate_hz = 50\ntrust = "{trust}"\n')
    return path


def test_serve_check_and_serve_refuse_unsigned_and_tampered_bundles(tmp_path, release):
    secret, trust, _ = release
    signed = signed_copy(XLSTM, tmp_path / "signed.policy", secret)
    config = _config(tmp_path / "c.toml", signed, trust, ["ipc:///tmp/policyrt-nowhere"])
    proc = cli("serve", "--config", config, "--check")
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr
    tampered = signed_copy(XLSTM, tmp_path / "tampered.policy", secret)
    _change_manifest_field(tampered)
    rehash(tampered)
    for bundle, reason in [(copy_bundle(XLSTM, tmp_path / "unsigned.policy"), "not signed by any key"),
                           (tampered, "changed after signing")]:
        _config(config, bundle, trust, ["ipc:///tmp/policyrt-nowhere"])
        for check in (["--check"], []):  # exit 2: the unit's RestartPreventExitStatus=2
            proc = cli("serve", "--config", config, *check)
            assert proc.returncode == 2 and reason in one_line(proc), proc.stderr


@pytest.mark.slow
def test_daemon_hot_reload_refuses_an_unsigned_bundle_and_keeps_the_running_one(tmp_path, release):
    secret, trust, _ = release
    running = signed_copy(XLSTM, tmp_path / "running.policy", secret)
    endpoint = ipc_endpoint()
    config = _config(tmp_path / "controller.toml", running, trust, [endpoint])
    robot = StreamingRobot(endpoint)
    notify = NotifyListener()
    notify.start()
    daemon = DaemonProcess(config, env={"NOTIFY_SOCKET": notify.path})
    try:
        robot.start()
        wait_until(lambda: robot.act_count() >= 10, "the robot gets actions")
        _config(config, copy_bundle(DT, tmp_path / "unsigned.policy"), trust, [endpoint])
        daemon.proc.send_signal(signal.SIGHUP)
        at, line = daemon.wait_log("reload refused, the running bundle stays")
        assert "not signed by any key in" in line
        notify.wait_for("RELOADING")
        notify.wait_for("READY")  # the refused reload has ended
        before = robot.act_count()
        wait_until(lambda: robot.act_count() > before + 10, "still controlling with the running bundle")
        _config(config, signed_copy(DT, tmp_path / "signed-dt.policy", secret), trust, [endpoint])
        daemon.proc.send_signal(signal.SIGHUP)
        notify.wait_for("RELOADING")
        notify.wait_for("READY")  # the reload thread has finished and counted the swap
        daemon.wait_log("swapped in the new session", at)
        daemon.proc.send_signal(signal.SIGTERM)
        code, out = daemon.finish()
        assert code == 0, "\n".join(daemon.lines)
        assert "reloads: 1 swapped, 1 refused" in out
    finally:
        daemon.kill()
        robot.stop()
        notify.close()
