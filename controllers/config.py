"""The controller daemon's TOML configuration, read into frozen dataclasses.

A daemon that misreads its configuration moves a robot the wrong way, so reading is strict: every
key is known, every value is checked, and an error names the file, the key, the value and what is
allowed. Nothing is guessed -- a typo such as `rate_hx` is an error, not a silently ignored line.
deploy/controller.toml is the commented example; docs/DAEMON.md describes each key.

Relative paths (bundle, key and recorder directories) are resolved against the directory of the
config file, so a config and its bundle can be moved together.

Board-side module: standard library only, Python 3.10 (TOML through policyrt._toml).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policyrt import _toml


class ConfigError(ValueError):
    """The configuration file is missing, not TOML, or has an unknown key or a bad value."""


@dataclass(frozen=True)
class SafetyConfig:
    fallback: str | tuple[float, ...] = "hold"  # "hold", "zero", or the safe action itself
    max_delta: float | tuple[float, ...] | None = None  # largest change of an action per tick
    stale_after_s: float | None = None  # an observation older than this is not acted on; None = 3 periods


@dataclass(frozen=True)
class RealtimeSettings:
    spin_us: int | None = (
        None  # busy-wait before each tick's deadline (jitter vs CPU); None = the loop's default
    )
    sched_fifo_priority: int = 0  # SCHED_FIFO priority 1..99; 0 = normal scheduling
    cpu_affinity: tuple[int, ...] = ()  # CPUs the loop may run on; empty = any
    lock_memory: bool = False  # mlockall: no page faults on the hot path


@dataclass(frozen=True)
class TelemetryConfig:
    pub: str | None = None  # endpoint the telemetry PUB socket binds; None = off
    prometheus_port: int | None = None  # HTTP /metrics port; None = off


@dataclass(frozen=True)
class FlightRecorderConfig:
    dir: Path | None = None  # where dumps go; None = no flight recorder
    ticks: int = 2000  # ring buffer length


@dataclass(frozen=True)
class RecordingConfig:
    dataset: Path | None = None  # episode recording into a dataset directory; None = off


@dataclass(frozen=True)
class AuthConfig:
    keys: Path | None = None  # directory made by `policyrt keys generate`; None = no CURVE
    client: str = "client"  # which client key pair in that directory is this controller's


@dataclass(frozen=True)
class ControllerConfig:
    path: Path  # the file this came from (for messages and reloads)
    bundle: Path
    robots: tuple[str, ...]
    backend: str = "auto"
    rate_hz: float | None = None  # None: the bundle's recommended control rate
    insecure: bool = False  # allow non-loopback endpoints without CURVE keys
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    realtime: RealtimeSettings = field(default_factory=RealtimeSettings)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    flight_recorder: FlightRecorderConfig = field(default_factory=FlightRecorderConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)


# --- value checkers: each returns the parsed value or raises _Bad(what is allowed) ---


class _Bad(Exception):
    def __init__(self, allowed: str):
        self.allowed = allowed


def _number(value) -> float:
    # bool is an int in Python; `true` is never a number in a config.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Bad("a finite number")
    return float(value)


def _positive(value) -> float:
    try:
        x = _number(value)
    except _Bad:
        x = -1.0
    if x <= 0:
        raise _Bad("a number > 0")
    return x


def _int_range(lo: int, hi: int, allowed: str | None = None) -> Callable[[Any], int]:
    def check(value) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise _Bad(allowed or f"an integer in {lo}..{hi}")
        return value

    return check


def _bool(value) -> bool:
    if not isinstance(value, bool):
        raise _Bad("true or false")
    return value


def _text(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad("a non-empty string")
    return value


_SCHEMES = ("tcp://", "ipc://", "inproc://")


def _endpoint(value) -> str:
    if not isinstance(value, str) or not value.startswith(_SCHEMES):
        raise _Bad("a ZeroMQ endpoint string: tcp://HOST:PORT or ipc://PATH")
    return value


def _optional_endpoint(value) -> str | None:
    return None if value == "" else _endpoint(value)


def _robots(value) -> tuple[str, ...]:
    allowed = 'a non-empty list of endpoints, e.g. ["tcp://127.0.0.1:5555"]'
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _Bad(allowed)
    try:
        robots = tuple(_endpoint(v) for v in value)
    except _Bad as bad:
        raise _Bad(allowed) from bad
    if len(set(robots)) != len(robots):
        raise _Bad("endpoints that are all different (one controller per robot endpoint)")
    return robots


def _fallback(value) -> str | tuple[float, ...]:
    allowed = '"hold", "zero", or a list of numbers (the safe action, one per action dimension)'
    if value in ("hold", "zero"):
        return value
    if isinstance(value, list) and value:
        try:
            return tuple(_number(v) for v in value)
        except _Bad as bad:
            raise _Bad(allowed) from bad
    raise _Bad(allowed)


def _max_delta(value) -> float | tuple[float, ...]:
    allowed = "a number > 0, or a list of numbers > 0 (one per action dimension)"
    try:
        if isinstance(value, list) and value:
            return tuple(_positive(v) for v in value)
        return _positive(value)
    except _Bad as bad:
        raise _Bad(allowed) from bad


def _cpus(value) -> tuple[int, ...]:
    allowed = "a list of CPU numbers (integers >= 0), e.g. [2, 3]"
    if not isinstance(value, list):
        raise _Bad(allowed)
    try:
        return tuple(_int_range(0, 4095)(v) for v in value)
    except _Bad as bad:
        raise _Bad(allowed) from bad


def _port_or_off(value) -> int | None:
    if value == 0:
        return None
    return _int_range(1, 65535, "a TCP port in 1..65535, or 0 for off")(value)


def _backend(value) -> str:
    from policyrt.runtime import ALIASES, BACKENDS

    allowed = ("auto", *BACKENDS, *ALIASES)
    if value not in allowed:
        raise _Bad("one of " + ", ".join(allowed))
    return value


class _Path:
    """A path; relative ones are taken from the config file's directory. '' means off where allowed."""

    def __init__(self, optional: bool):
        self.optional = optional

    def __call__(self, value, base: Path) -> Path | None:
        if self.optional and value == "":
            return None
        if not isinstance(value, str) or not value:
            raise _Bad("a path string" + (', or "" for off' if self.optional else ""))
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path


# section name -> {key: checker}; the top level is section "".
_SCHEMA: dict[str, dict[str, Callable]] = {
    "": {
        "bundle": _Path(optional=False),
        "backend": _backend,
        "robots": _robots,
        "rate_hz": _positive,
        "insecure": _bool,
    },
    "safety": {"fallback": _fallback, "max_delta": _max_delta, "stale_after_s": _positive},
    "realtime": {
        "spin_us": _int_range(0, 1_000_000),
        "sched_fifo_priority": _int_range(0, 99, "an integer in 1..99, or 0 for normal scheduling"),
        "cpu_affinity": _cpus,
        "lock_memory": _bool,
    },
    "telemetry": {"pub": _optional_endpoint, "prometheus_port": _port_or_off},
    "flight_recorder": {"dir": _Path(optional=True), "ticks": _int_range(8, 10_000_000)},
    "recording": {"dataset": _Path(optional=True)},
    "auth": {"keys": _Path(optional=True), "client": _text},
}
_REQUIRED = ("bundle", "robots")
_SECTIONS = {
    "safety": SafetyConfig,
    "realtime": RealtimeSettings,
    "telemetry": TelemetryConfig,
    "flight_recorder": FlightRecorderConfig,
    "recording": RecordingConfig,
    "auth": AuthConfig,
}


def load_config(path) -> ControllerConfig:
    """Read and check the config file at `path`; raises ConfigError with a message a user can act on."""
    path = Path(path)
    try:
        doc = _toml.load_path(path)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file (see deploy/controller.toml for an example)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except _toml.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(doc, path)


def parse_config(doc: dict, path) -> ControllerConfig:
    """Check an already parsed TOML document; `path` names it in messages and anchors relative paths."""
    path = Path(path)
    base = path.resolve().parent
    top = _section(doc, "", path, base)
    for key in _REQUIRED:
        if key not in top:
            raise ConfigError(f"{path}: missing required key '{key}' at the top level")
    sections = {}
    for name, cls in _SECTIONS.items():
        raw = doc.get(name, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: '{name}' must be a table ([{name}]), got {raw!r}")
        sections[name] = cls(**_section(raw, name, path, base))
    return ControllerConfig(path=path, **top, **sections)


def _section(raw: dict, name: str, path: Path, base: Path) -> dict:
    schema = _SCHEMA[name]
    where = f"[{name}]" if name else "the top level"
    out = {}
    for key, value in raw.items():
        if not name and key in _SECTIONS:
            continue  # a table, checked by the caller
        if key not in schema:
            allowed = list(schema) + ([f"[{s}]" for s in _SECTIONS] if not name else [])
            raise ConfigError(f"{path}: unknown key '{key}' in {where}; allowed: {', '.join(allowed)}")
        check = schema[key]
        try:
            out[key] = check(value, base) if isinstance(check, _Path) else check(value)
        except _Bad as bad:
            label = f"{name}.{key}" if name else key
            raise ConfigError(f"{path}: {label} = {value!r} is not allowed; expected {bad.allowed}") from None
    return out
