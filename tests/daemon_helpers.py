"""Test ends for the controller daemon: robots that keep streaming on their own, a listener
standing in for systemd's notify socket, a reader for the daemon's log, and bundle copies that
are corrupted or drift from their parity record."""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from realtime_helpers import RealtimeRobot, spec
from wire_helpers import PATIENCE_S, python_env

from policyrt.arrays import decode_array, encode_array
from policyrt.bundle import write_manifest
from policyrt.protocol import MsgType, ObsFlag


class StreamingRobot(threading.Thread):
    """A robot that answers every HELLO with its SPEC, streams observations every `period_s`
    (the first after each SPEC flagged RESET) and keeps every ACT it receives."""

    def __init__(self, endpoint: str, period_s: float = 0.005):
        super().__init__(daemon=True)
        self.robot = RealtimeRobot(endpoint, spec())
        self.period_s = period_s
        self.acts: list[tuple[int, np.ndarray]] = []  # (flags, action) in arrival order
        self.byes = 0
        self.specs_sent = 0
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        robot, rng = self.robot, np.random.default_rng(0)
        step, next_obs = 0, 0.0
        while not self._stop_event.is_set():
            msg = robot.session.recv(0.001)
            if msg is not None and msg.type is MsgType.HELLO:
                robot.session.send(robot.enc.spec(robot.spec, ack=msg.seq))
                self.specs_sent += 1
                step = 0
            elif msg is not None and msg.type is MsgType.BYE:
                self.byes += 1
            while (act := robot.stream.recv(0)) is not None:
                if act.type is MsgType.ACT:
                    with self._lock:
                        self.acts.append((act.flags, act.values.copy()))
            if self.specs_sent and time.monotonic() >= next_obs:
                flags = int(ObsFlag.RESET) if step == 0 else 0
                robot.stream.send(
                    robot.enc.obs(rng.normal(0, 0.05, 4).astype(np.float32), 1.0, flags=flags, step=step)
                )
                step += 1
                next_obs = time.monotonic() + self.period_s

    def act_count(self) -> int:
        with self._lock:
            return len(self.acts)

    def acts_since(self, index: int) -> list[tuple[int, np.ndarray]]:
        with self._lock:
            return self.acts[index:]

    def last_act(self) -> tuple[int, np.ndarray]:
        with self._lock:
            return self.acts[-1]

    def stop(self) -> None:
        self._stop_event.set()
        self.join(PATIENCE_S)
        self.robot.close()


class NotifyListener(threading.Thread):
    """Receives sd_notify datagrams on a real unix socket, as systemd does."""

    def __init__(self):
        super().__init__(daemon=True)
        self.path = os.path.join(tempfile.mkdtemp(prefix="prtsd", dir="/tmp"), "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: queue.Queue[dict] = queue.Queue()
        self._closed = False

    def run(self) -> None:
        while not self._closed:
            try:
                text = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.put(dict(line.split("=", 1) for line in text.splitlines()))

    def wait_for(self, key: str, value: str = "1") -> dict:
        """The next message with key=value (others before it are skipped)."""
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline:
            try:
                msg = self.messages.get(timeout=1.0)
            except queue.Empty:
                continue
            if msg.get(key) == value:
                return msg
        raise AssertionError(f"no {key}={value} notification")

    def pending(self) -> list[dict]:
        out = []
        while not self.messages.empty():
            out.append(self.messages.get())
        return out

    def close(self) -> None:
        self._closed = True
        self.sock.close()


class DaemonProcess:
    """`policyrt serve --config CONFIG` in its own process, its stderr collected line by line."""

    def __init__(self, config: Path, env: dict | None = None):
        cmd = [sys.executable, "-m", "policyrt.cli", "serve", "--config", str(config)]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**python_env(), **(env or {})},
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append("<EOF>")
            self._cond.notify_all()

    def wait_log(self, needle: str, start: int = 0) -> tuple[int, str]:
        """(index, line) of the first log line from index `start` on that contains `needle`."""
        deadline = time.monotonic() + PATIENCE_S
        with self._cond:
            while time.monotonic() < deadline:
                for i in range(start, len(self.lines)):
                    if needle in self.lines[i]:
                        return i, self.lines[i]
                if self.lines and self.lines[-1] == "<EOF>":
                    break
                self._cond.wait(1.0)
        raise AssertionError(f"{needle!r} never logged; log:\n" + "\n".join(self.lines))

    def finish(self) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=PATIENCE_S)
        self._reader.join(PATIENCE_S)
        return self.proc.returncode, out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def corrupt_bundle(src: Path, dst: Path) -> Path:
    """A copy whose policy.onnx has flipped bytes: its checksum no longer matches the manifest."""
    copy_bundle(src, dst)
    onnx = dst / "policy.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    onnx.write_bytes(bytes(data))
    return dst


def drifted_bundle(src: Path, dst: Path, offset: float = 0.01) -> Path:
    """A copy whose parity.json reference actions are off by `offset`, checksums rewritten: it
    opens fine, and only the parity verification can tell it does not reproduce its record."""
    copy_bundle(src, dst)
    parity = json.loads((dst / "parity.json").read_text())
    action = decode_array(parity["reference"]["action"]) + np.float32(offset)
    parity["reference"]["action"] = encode_array(action.astype(np.float32))
    (dst / "parity.json").write_text(json.dumps(parity))
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest.pop("files")
    write_manifest(dst, manifest)
    return dst
