"""Build a real-time controller from its settings: the one builder of `policyrt run --mode realtime`
and `policyrt serve` (controllers/daemon.py).

Whatever front-end produced the settings (flags or a TOML file), the same pieces come out of the
same code: the loopback policy and the CURVE client, the loop's config at the bundle's rate where
none was given, telemetry, the flight recorder and the episode recorder. A message about a
setting names it the way its writer knows it (`--rate HZ` or `rate_hz in FILE`,
ControllerSettings.describe).

Board-side module: standard library, numpy and pyzmq only, Python 3.10.
"""

from __future__ import annotations

import os

from policyrt.controllers.settings import ControllerSettings, RealtimeConfig
from policyrt.stopping import STOP, StopRequest


def check_endpoints(settings: ControllerSettings):
    """Apply the loopback policy to every endpoint; returns the CURVE client setup (or None)."""
    from policyrt.controllers.auth import check_endpoint, load_client

    auth = settings.auth
    curve = load_client(auth.keys, auth.client) if auth.keys else None
    for endpoint in settings.robots:
        check_endpoint(endpoint, secured=curve is not None, insecure=settings.insecure,
                       what="robot endpoint", how=settings.describe("auth.keys"))
    if settings.telemetry.pub:
        # The telemetry socket is plain PUB (it carries no commands); off loopback it needs the
        # explicit opt-in like any other plain socket.
        check_endpoint(settings.telemetry.pub, secured=False, insecure=settings.insecure,
                       what=settings.label("telemetry.pub"), how=None)
    return curve


def loop_config(settings: ControllerSettings, manifest) -> RealtimeConfig:
    """The loop's config, at the bundle's recommended rate where the settings give none."""
    try:
        return settings.loop.at_bundle_rate(manifest)
    except ValueError as exc:
        raise ValueError(f"{exc}: set {settings.describe('loop.rate_hz')}") from None


def load_session(settings: ControllerSettings):
    """The bundle's session with one slot per robot."""
    return settings.session.load(settings.bundle, batch_size=len(settings.robots))


def make_telemetry(settings: ControllerSettings):
    telemetry = settings.telemetry
    if not telemetry.pub and not telemetry.prometheus_port:
        return None
    from policyrt.controllers.telemetry import Telemetry

    return Telemetry(telemetry.pub, prometheus_port=telemetry.prometheus_port)


def make_flight_recorder(settings: ControllerSettings):
    if settings.flight_recorder.dir is None:
        return None
    from policyrt.controllers.flight_recorder import FlightRecorder

    return FlightRecorder(settings.flight_recorder.dir, capacity=settings.flight_recorder.ticks)


def check_recording(settings: ControllerSettings) -> None:
    """The episode dataset is written at the stop: a place it could not be written to must fail at
    the start, not after hours of episodes (policyrt/episodes.py replaces only a dataset or an
    empty folder, and writes next to it first)."""
    dataset = settings.recording.dataset
    if dataset is None:
        return
    where = settings.label("recording.dataset")
    if dataset.exists() and not (dataset / "dataset.json").is_file() and (not dataset.is_dir() or any(dataset.iterdir())):
        raise ValueError(f"{where} {dataset}: exists and is not a dataset; it would not be replaced at the stop")
    parent = next(p for p in dataset.absolute().parents if p.exists())
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{where} {dataset}: {parent} is not writable; the dataset is written there at the stop")


def make_episode_recorder(settings: ControllerSettings, command: str):
    dataset = settings.recording.dataset
    if dataset is None:
        return None
    check_recording(settings)
    from policyrt.controllers.episode_recorder import EpisodeRecorder

    return EpisodeRecorder(dataset, fmt=settings.recording.format, command=command)


def build_controller(settings: ControllerSettings, *, command: str = "", stop: StopRequest = STOP):
    """The RealtimeController of `settings`: endpoints checked first (a refused one fails before
    a bundle loads), then the bundle's session with one slot per robot, then the controller around
    it (`controller.session`), warmed up (a session that cannot step raises the core's
    InferenceFailed here, a RuntimeError, before any robot is contacted). command: the command
    line recorded into an episode dataset. stop: the request the loop reads every tick (SIGINT,
    SIGTERM, stop.request()), so no watcher thread is needed to end it."""
    from policyrt.controllers.realtime_loop import RealtimeController

    curve = check_endpoints(settings)
    session = load_session(settings)
    try:
        controller = RealtimeController(
            session,
            list(settings.robots),
            loop_config(settings, session.manifest),
            telemetry=make_telemetry(settings),
            recorder=make_flight_recorder(settings),
            curve=curve,
            episodes=make_episode_recorder(settings, command),
            stop=stop,
        )
        controller.warm_up()
        return controller
    except BaseException:
        session.close()
        raise
