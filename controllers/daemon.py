"""The controller daemon: `policyrt serve --config controller.toml`, a systemd service.

It owns what a long-running controller needs around the real-time loop
(controllers/realtime_loop.py), and nothing on the loop's hot path:

- start-up: the config (controllers/config.py), then the controller from the same builder as
  `policyrt run --mode realtime` (controllers/build.py: loopback policy and CURVE keys, the
  bundle's batched session with one slot per robot, telemetry, flight and episode recorders);
  then the loop in the main thread.
- systemd (`Type=notify`, controllers/sd_notify.py): READY=1 once every robot has answered its
  handshake; WATCHDOG=1 from the loop's per-tick hook, so pings stop when ticks stop and systemd
  restarts a stalled controller; STATUS= lines; STOPPING=1; RELOADING=1 around a reload.
- signals: handlers only set flags or write a wake-up byte; nothing in them takes a lock.
  SIGTERM/SIGINT -> the process's StopRequest (policyrt/stopping.py), which the loop reads every
  tick (every robot gets its safe action and BYE), recorders flushed, exit 0; the reload thread is
  woken once the loop has ended. SIGHUP -> a reload thread re-reads the config, loads the bundle named there, verifies
  it against its parity.json and hands it to request_swap, which swaps at the next tick boundary
  with fresh state; a bundle that fails is refused with the reason and the old one keeps running.
  SIGUSR1 -> flight recorder dump.
- logs on stderr: journald adds timestamps and reads `<N>` priority prefixes, so under systemd
  lines carry a priority instead of a time; in a terminal they carry the time.

Board-side module: standard library, numpy and pyzmq only, Python 3.10.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from operator import attrgetter

from policyrt.controllers import build
from policyrt.controllers.config import load_config
from policyrt.controllers.sd_notify import Notifier
from policyrt.controllers.settings import SETTINGS, ControllerSettings, SessionSettings
from policyrt.stopping import STOP, StopRequest

log = logging.getLogger("policyrt.daemon")


class StartupError(RuntimeError):
    """The daemon cannot start: the message says what to fix (exit code 2, no restart helps)."""


@dataclass
class DaemonStats:
    reloads: int = 0  # bundles swapped in on SIGHUP
    reload_failures: int = 0  # SIGHUPs whose bundle was refused (the old one kept running)
    recorder_dumps: int = 0


# --- logging ---

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    """`<priority>name: message`: journald strips the prefix into the PRIORITY field, so
    `journalctl -p warning` works, and adds the timestamp itself."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):  # stderr is connected to journald
        handler.setFormatter(_JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


# --- start-up pieces beyond the builder's (controllers/build.py), each usable by --check ---


def verify_bundle(bundle, session: SessionSettings):
    """Replay the bundle's parity.json on the session's backend; raises StartupError when it does not pass."""
    from policyrt.runtime import BundleError
    from policyrt.runtime.verify import verify_backend

    try:
        report = verify_backend(bundle, session.backend, **session.backend_options())
    except (BundleError, ImportError):  # they name the file, or the package to install
        raise
    except Exception as exc:  # the replay's step failed (InferenceError or a backend's own error)
        lines = str(exc).strip().splitlines()
        raise StartupError(
            f"{bundle.path}: parity.json cannot be replayed on {session.backend}: {lines[0] if lines else type(exc).__name__}"
        ) from exc
    if not report.ok:
        worst = max(report.outputs, key=lambda o: o.max_judged)
        raise StartupError(
            f"{bundle.path}: fails verification on {report.backend}: {worst.name} error {worst.max_judged:.2e} "
            f"> tolerance {report.tolerance:g} from step {worst.first_step_over}"
        )
    return report


# Settings a SIGHUP does not apply (the bundle and the session settings are what it reloads).
_RESTART_ONLY = ("robots", "insecure", "loop", "telemetry", "flight_recorder", "recording", "auth")


class Daemon:
    """One run of the daemon: start, serve until a stop request, report."""

    def __init__(self, cfg: ControllerSettings, notifier: Notifier | None = None, stop: StopRequest = STOP):
        self.cfg = cfg
        self.notifier = notifier or Notifier()
        self.stop = stop
        self.stats = DaemonStats()
        self.controller = None
        self.session = None
        self._ready = False
        self._tick = 0  # the loop's latest tick, written by the tick hook (one int: no lock needed)
        # SIGHUP's handler writes a byte here (no lock taken in a handler, as in policyrt/stopping.py);
        # the reload thread waits on the other end.
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)
        self._dump_unavailable = False
        self._stopping = threading.Event()

    # --- start-up ---

    def start(self):
        cfg = self.cfg
        self.controller = build.build_controller(
            cfg, command=f"policyrt serve --config {cfg.origin}", stop=self.stop
        )
        self.session = self.controller.session
        self.controller.on_tick = self._on_tick
        log.info(
            "serving %d robot(s) at %g Hz with %s on %s: %s",
            len(cfg.robots),
            self.controller.config.rate_hz,
            cfg.bundle.name,
            self.session.backend_name,
            ", ".join(cfg.robots),
        )

    # --- the tick hook: runs on the control thread every tick, so it does almost nothing ---

    def _on_tick(self, tick: int) -> None:
        self._tick = tick
        self.notifier.watchdog()
        if not self._ready and self._all_connected():
            self._ready = True
            self.notifier.ready(f"serving {len(self.cfg.robots)} robot(s), bundle {self.cfg.bundle.name}")
            log.info("ready: every robot answered the handshake (tick %d)", tick)
        if self._dump_unavailable:
            self._dump_unavailable = False
            log.warning(
                "SIGUSR1: no flight recorder to dump (set %s)", self.cfg.describe("flight_recorder.dir")
            )

    def _all_connected(self) -> bool:
        return all(port.spec is not None for port in self.controller.ports)

    # --- signals: flags and thread-safe requests only ---

    def install_signal_handlers(self) -> None:
        self.stop.install()  # SIGTERM, SIGINT: the process's one stop request
        signal.signal(signal.SIGHUP, lambda *_: self._wake())
        signal.signal(signal.SIGUSR1, self._on_dump_signal)

    def _wake(self) -> None:
        """Wake the reload thread: for a reload, or to let it see that the daemon stops."""
        try:
            self._wake_writer.send(b"\x00")
        except OSError:  # full of earlier bytes, or closed: it wakes anyway
            pass

    def _on_dump_signal(self, *_):
        # request_dump only sets a flag: the loop copies the ring at its next tick and a writer
        # thread writes the file.
        recorder = self.controller.recorder if self.controller is not None else None
        if recorder is None:
            self._dump_unavailable = True  # logged by the tick hook, outside the handler
            return
        recorder.request_dump("sigusr1")
        self.stats.recorder_dumps += 1

    # --- hot reload, in its own thread ---

    def _reload_worker(self) -> None:
        while True:
            select.select([self._wake_reader], [], [])
            if self._stopping.is_set() or self.stop.requested:
                return
            while True:  # one reload for any number of SIGHUPs so far
                try:
                    self._wake_reader.recv(4096)
                except BlockingIOError:
                    break
            self.notifier.reloading("loading the new bundle")
            try:
                self._reload_once()
            except Exception as exc:  # anything at all: the running bundle must keep running
                self.stats.reload_failures += 1
                log.error("reload refused, the running bundle stays: %s", exc)
            self.notifier.ready(f"serving, bundle {self.cfg.bundle.name}")

    def _reload_once(self) -> None:
        new_cfg = load_config(self.cfg.origin)
        changed = [SETTINGS[name].label(new_cfg.origin) for name in SETTINGS
                   if name.startswith(_RESTART_ONLY) and attrgetter(name)(new_cfg) != attrgetter(name)(self.cfg)]
        if changed:
            log.warning(
                "reload: only the bundle and the session (backend, threads, target_return) are reloaded; "
                "restart to apply %s", ", ".join(changed)
            )
        log.info("reload: loading %s on %s", new_cfg.bundle, new_cfg.session.backend)
        session = build.load_session(new_cfg)
        try:
            old, new = self.session.manifest, session.manifest
            if (new.obs_dim, new.act_dim) != (old.obs_dim, old.act_dim):
                raise StartupError(
                    f"{new_cfg.bundle}: obs_dim={new.obs_dim}, act_dim={new.act_dim} do not fit the robots "
                    f"(the running bundle has obs_dim={old.obs_dim}, act_dim={old.act_dim})"
                )
            report = verify_bundle(session.bundle, new_cfg.session)
        except BaseException:
            session.close()
            raise
        ctrl = self.controller
        swaps, refused = ctrl.swaps, ctrl.swaps_refused
        ctrl.request_swap(session)
        # Read after the request: the swap lands at the first tick boundary after it, so the
        # loop's "tick T: swapped in" line says T <= requested + 1 (T = requested when that
        # boundary came before this read); docs/DAEMON.md, "Hot reload".
        requested = self._tick
        log.info(
            "reload: %s verified on %s (parity, %d steps); swap requested after tick %d",
            new_cfg.bundle,
            report.backend,
            report.steps,
            requested,
        )
        done = self._await_swap(swaps, refused)
        if done:
            retired, ctrl.previous_session = ctrl.previous_session, None
            self.session, self.cfg = session, new_cfg
            self.stats.reloads += 1
            if retired is not None:
                retired.close()
        elif done is False:
            session.close()
            raise StartupError(f"{new_cfg.bundle}: the control loop refused the new session (see above)")
        # None: the daemon is stopping; the loop's shutdown owns both sessions now.

    def _await_swap(self, swaps: int, refused: int) -> bool | None:
        """True once the loop swapped, False if it refused, None if the daemon stops first."""
        ctrl = self.controller
        period = 1.0 / ctrl.config.rate_hz
        while not self._stopping.is_set():
            if ctrl.swaps > swaps:
                return True
            if ctrl.swaps_refused > refused:
                return False
            if self.stop.wait(period):
                break
        return None

    # --- the run ---

    def run(self) -> int:
        """Start, then serve until a stop request; returns the exit code."""
        self.install_signal_handlers()
        self.start()
        return self.serve()

    def serve(self) -> int:
        """Run the loop (after start()) until a stop signal; 0 once the robots got their safe action."""
        reloader = threading.Thread(target=self._reload_worker, name="policyrt-reload", daemon=True)
        reloader.start()
        # The loop reads self.stop every tick, so a stop requested while loading (SIGTERM during
        # start()) ends it at its first tick; the reload thread is woken when the loop has ended.
        self.notifier.status(f"connecting to {len(self.cfg.robots)} robot(s)")  # shown by systemctl status
        t0 = time.monotonic()
        try:
            result = self.controller.run()
        finally:
            self._stopping.set()
            self._wake()
            self.notifier.stopping("stopping: safe action sent")
        self._report(result, time.monotonic() - t0)
        return 0

    def _report(self, result, seconds: float) -> None:
        from policyrt.controllers.results import format_result

        stats = self.stats
        recorder = self.controller.recorder
        files = f", {len(recorder.dumps)} file(s) in {recorder.out_dir}" if recorder is not None else ""
        connected = result.counters.get("robots_connected", 0)
        print(
            f"policyrt serve: stopped by {self.stop.reason or 'the loop'} after {seconds:.1f} s; "
            f"robots connected at the end: {connected} of {len(self.cfg.robots)}; "
            f"reloads: {stats.reloads} swapped, {stats.reload_failures} refused; "
            f"flight recorder: {stats.recorder_dumps} dump(s) on SIGUSR1{files}\n{format_result(result)}",
            flush=True,
        )
