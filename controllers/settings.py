"""The controller's settings: one frozen schema, read from a TOML file or from command-line flags.

Each setting is one field of the frozen dataclasses below, and that field is the only place that
defines it: its name, its default, its allowed values (a checker from controllers/checks.py) and
its help, plus where it appears -- its key in the daemon's config file and its `policyrt run`
flag. The front-ends are generated from the schema:

- controllers/config.py reads a TOML file (`policyrt serve --config FILE`);
- policyrt/commands/_realtime_args.py adds the flags of `policyrt run` and reads them back;
- policyrt/commands/_session_args.py adds --backend/--threads/--target-return (SessionSettings)
  to every command that loads a session.

Both check a value with the same checker, so what the file refuses the command line refuses too,
with the same "expected ..." text. controllers/build.py turns the settings into a running
controller, for `run --mode realtime` and `serve` alike.

Board-side module: standard library only, Python 3.10.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from policyrt.controllers import checks

# One default backend for every command (the TOML file's, `run`'s, `verify`'s ...): the name of
# what runs. "auto" is accepted as a synonym and has only ever meant ONNX Runtime
# (runtime.AUTO_BACKEND); a default that named a choice the runtime does not make would let a
# robot's backend change under it on the day "auto" learned to choose.
DEFAULT_BACKEND = "onnxruntime"


@dataclass(frozen=True)
class Setting:
    """Where one field of the schema appears and how it is checked (the field's metadata)."""

    help: str
    check: Callable  # a TOML-native value (str, number, bool, list) -> the field's value
    toml: str  # its key in the config file: "key" (top level) or "section.key"
    flag: str  # its `policyrt run` option ("--max-delta") or positional ("bundle")
    metavar: str | None = None
    default_text: str | None = None  # the default as --help states it, where the value says little
    text: Callable[[str], Any] = checks.literal  # command-line text -> a TOML-native value
    shared: bool = False  # `run` uses it in lockstep too (otherwise it is a --mode realtime flag)
    argparse: tuple[tuple[str, Any], ...] = ()  # extra add_argument keywords (action, required, ...)
    # False: the command line passes the text on unchecked and what uses it refuses a bad one in
    # the command's own one-line error (the backend: the runtime knows its names).
    check_flag: bool = True

    def parse(self, value, base: Path | None):
        """The checked value; raises checks.Invalid(what is allowed). Paths are taken from `base`."""
        return self.check(value, base) if isinstance(self.check, checks.PathCheck) else self.check(value)

    def label(self, origin: Path | None) -> str:
        """The setting's name to whoever wrote it: the flag, or the key in the file ("[auth] keys")."""
        if origin is None:
            return self.flag
        section, _, key = self.toml.rpartition(".")
        return f"[{section}] {key}" if section else key

    def describe(self, origin: Path | None) -> str:
        """What a message tells its writer to set: "--curve-keys DIR", "[auth] keys in FILE"."""
        if origin is None:
            return " ".join(filter(None, (self.flag, self.metavar)))
        return f"{self.label(origin)} in {origin}"


def setting(default=MISSING, **meta) -> Any:
    return field(default=default, metadata={"setting": Setting(**meta)})


def group(cls) -> Any:
    """A nested section of settings (its own frozen dataclass)."""
    return field(default_factory=cls, metadata={"group": cls})


@dataclass(frozen=True)
class SessionSettings:
    """How a bundle's session is loaded; the same flags on every command that loads one."""

    backend: str = setting(
        DEFAULT_BACKEND, toml="backend", flag="--backend", check=checks.backend, text=str, shared=True,
        metavar="NAME", check_flag=False,
        help="onnxruntime (ONNX Runtime on the CPU; auto means the same), torch, torch-cuda, or tensorrt "
        "(an engine built and verified on this board: policyrt build-engine, policyrt verify)",
    )
    threads: int = setting(
        1, toml="threads", flag="--threads", check=checks.int_range(1, 256), shared=True, metavar="N",
        help="ONNX Runtime intra-op threads (1: latency first; 2 pays off for a batched session in "
        "lockstep, where the sim server waits while the controller infers)",
    )
    target_return: float | None = setting(
        None, toml="target_return", flag="--target-return", check=checks.number, shared=True, metavar="R",
        default_text="the bundle's target_return",
        help="return to command at every reset (return-conditioned policies; a lower one asks for a "
        "worse episode)",
    )
    trust: Path | None = setting(
        None, toml="trust", flag="--trust", check=checks.PathCheck(optional=True), text=str, shared=True,
        metavar="DIR", default_text="no signature required",
        help="load only a bundle signed by a public key in this trust directory (NAME.pub files from "
        "`policyrt keys signing`; bundles are signed with `policyrt sign`)",
    )

    def backend_options(self) -> dict:
        """Keyword options for runtime.load / verify_backend."""
        if self.threads == 1:
            return {}
        from policyrt.runtime import resolve_backend

        if resolve_backend(self.backend) != "onnxruntime":
            raise ValueError(
                f"threads = {self.threads} (--threads) applies to ONNX Runtime only, not to backend {self.backend!r}"
            )
        return {"intra_op_threads": self.threads}

    def load(self, bundle, batch_size: int = 1):
        """The bundle's session with `batch_size` slots, commanding target_return when one is set
        (it stays across resets); with `trust`, a bundle no key there signed is refused
        (policyrt.signing.UntrustedBundle) before a backend is made."""
        from policyrt.runtime import load

        session = load(bundle, backend=self.backend, batch_size=batch_size, trust=self.trust,
                       **self.backend_options())
        if self.target_return is not None:
            session.set_target_return(self.target_return)
        return session


@dataclass(frozen=True)
class RealtimeConfig:
    """How the real-time loop runs. Frozen: a running loop never sees its config change."""

    rate_hz: float | None = setting(
        None, toml="rate_hz", flag="--rate", check=checks.positive, metavar="HZ",
        default_text="the bundle's recommended control rate",
        help="control rate; tick k starts at t0 + k / rate",
    )
    stale_after_s: float | None = setting(
        None, toml="safety.stale_after_s", flag="--stale-after", check=checks.positive, metavar="S",
        default_text="3 periods of the slower of controller and robot",
        help="an observation older than this many seconds (local receive time) is stale: its robot gets "
        "the fallback action",
    )
    fallback: str | tuple[float, ...] = setting(
        "hold", toml="safety.fallback", flag="--fallback", check=checks.fallback, text=checks.word_or_list,
        metavar="MODE",
        help="action sent on a fault: hold (repeat the last applied), zero (zero clipped into the bounds), "
        "or the safe action, one value per action dimension (0.0,0.5; in the file [0.0, 0.5])",
    )
    max_delta: float | tuple[float, ...] | None = setting(
        None, toml="safety.max_delta", flag="--max-delta", check=checks.max_delta, metavar="D",
        default_text="off",
        help="rate limit: largest change of an action per tick, one value or one per action dimension "
        "(0.1 or 0.1,0.2)",
    )
    obs_range_factor: float = setting(
        10.0, toml="safety.obs_range_factor", flag="--obs-range-factor", check=checks.non_negative,
        shared=True, metavar="F",
        help="observation guard: an observation outside the bundle's recorded range (its training data's "
        "min/max) widened F times around its center gets the fallback action, like a stale one, and the "
        "policy sees it clipped into that box (docs/SAFETY.md); 0 = off",
    )
    deadline_s: float | None = None
    """Inference must end this long after the tick's start, or the tick's robots get the fallback.
    None: one period (the next tick's start)."""
    spin_us: int = setting(
        200, toml="realtime.spin_us", flag="--spin-us", check=checks.int_range(0, 1_000_000), shared=True,
        metavar="US", default_text="200 in real time, 0 in lockstep",
        help="spin instead of sleeping: real time busy-waits this long before each tick's deadline, "
        "lockstep busy-polls each observation this long before blocking. A core that slept wakes with "
        "cold caches and the next tick runs slower (docs/BENCHMARKS.md); spinning costs CPU",
    )
    warmup_steps: int = 10
    """Session steps (on zeros, state reset afterwards) before the first tick, so the backend's
    first-run allocations do not land on a robot's first deadline."""
    hello_retry_s: float = 0.5
    """Say HELLO again this often while a robot has not answered with its SPEC."""
    reconnect_after_s: float = 1.0
    """A robot whose observations stopped this long gets a new HELLO (it may have restarted)."""
    sched_fifo_priority: int = setting(
        0, toml="realtime.sched_fifo_priority", flag="--sched-fifo", metavar="PRIO",
        check=checks.int_range(0, 99, "an integer in 1..99, or 0 for normal scheduling"),
        default_text="0, normal scheduling",
        help="run the loop with SCHED_FIFO priority 1..99 (needs root, CAP_SYS_NICE or an rtprio limit)",
    )
    cpu_affinity: tuple[int, ...] = setting(
        (), toml="realtime.cpu_affinity", flag="--cpu", check=checks.cpus, text=checks.number_list,
        metavar="CPUS", default_text="any",
        help="pin the controller to these CPUs, e.g. 1 or 2,3 (give it a core nothing else real-time uses)",
    )
    lock_memory: bool = setting(
        False, toml="realtime.lock_memory", flag="--lock-memory", check=checks.boolean,
        argparse=(("action", "store_true"),),
        help="mlockall(): keep every page resident, so no tick waits on a page fault",
    )

    def __post_init__(self):
        rate = self.rate_hz
        if rate is not None and not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate_hz must be a positive number (or None for the bundle's), got {rate!r}")
        if self.stale_after_s is not None and not self.stale_after_s > 0:
            raise ValueError(f"stale_after_s must be > 0 (or None for 3 periods), got {self.stale_after_s!r}")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be > 0 (or None for one period), got {self.deadline_s!r}")
        if self.spin_us < 0:
            raise ValueError(f"spin_us must be >= 0, got {self.spin_us!r}")
        if not (math.isfinite(self.obs_range_factor) and self.obs_range_factor >= 0):
            raise ValueError(f"obs_range_factor must be a finite number >= 0 (0: off), got {self.obs_range_factor!r}")

    def at_bundle_rate(self, manifest) -> RealtimeConfig:
        """This config with rate_hz set: the bundle's recommended rate where none was given."""
        if self.rate_hz is not None:
            return self
        rate = getattr(manifest, "control_rate_hz", None)
        if not rate:
            raise ValueError(f"the bundle {manifest.name} recommends no control rate")
        return dataclasses.replace(self, rate_hz=float(rate))


@dataclass(frozen=True)
class TelemetrySettings:
    pub: str | None = setting(
        None, toml="telemetry.pub", flag="--telemetry", check=checks.optional_endpoint, text=str,
        metavar="ENDPOINT", default_text="off",
        help='publish JSON telemetry snapshots on a PUB socket bound here (see `policyrt top`; "" = off)',
    )
    prometheus_port: int | None = setting(
        None, toml="telemetry.prometheus_port", flag="--prometheus-port", check=checks.port_or_off,
        metavar="PORT", default_text="off",
        help="serve Prometheus /metrics on this port (needs prometheus-client; 0 = off)",
    )


@dataclass(frozen=True)
class FlightRecorderSettings:
    dir: Path | None = setting(
        None, toml="flight_recorder.dir", flag="--record-dir", check=checks.PathCheck(optional=True),
        text=str, metavar="DIR", default_text="no flight recorder",
        help="flight recorder: dump the last ticks to DIR/flight-*.npz on faults and on SIGUSR1",
    )
    ticks: int = setting(
        2000, toml="flight_recorder.ticks", flag="--record-ticks", check=checks.int_range(8, 10_000_000),
        metavar="N", help="ticks the flight recorder keeps (its ring buffers' length)",
    )


@dataclass(frozen=True)
class RecordingSettings:
    dataset: Path | None = setting(
        None, toml="recording.dataset", flag="--record-episodes", check=checks.PathCheck(optional=True),
        text=str, metavar="DIR", default_text="off",
        help="write every episode (observations, applied and raw actions, rewards) as a dataset to DIR "
        "when the controller stops (`policyrt train --data DIR` reads it); episodes stay in memory "
        "until then",
    )
    format: str = setting(
        "npz", toml="recording.format", flag="--episodes-format", check=checks.dataset_format, text=str,
        argparse=(("choices", ("npz", "minari")),),
        help="dataset format of the episode recording: npz (board-side) or minari (needs the sim extra)",
    )


@dataclass(frozen=True)
class AuthSettings:
    keys: Path | None = setting(
        None, toml="auth.keys", flag="--curve-keys", check=checks.PathCheck(optional=True), text=str,
        metavar="DIR", default_text="no CURVE",
        help="CURVE keys from `policyrt keys generate DIR` (this controller is the client side)",
    )
    client: str = setting(
        "client", toml="auth.client", flag="--curve-client", check=checks.text, text=str, metavar="NAME",
        help="which client key pair in the key directory is this controller's (NAME.key_secret)",
    )


@dataclass(frozen=True)
class ControllerSettings:
    """Everything a real-time controller is built from (controllers/build.py)."""

    bundle: Path = setting(
        toml="bundle", flag="bundle", check=checks.PathCheck(optional=False), text=str, shared=True,
        help="the policy bundle: directory (NAME.policy/) or .tar",
    )
    robots: tuple[str, ...] = setting(
        toml="robots", flag="--connect", check=checks.robots, text=str, shared=True, metavar="ENDPOINT",
        argparse=(("action", "append"), ("required", True)),
        help="the robot's endpoint, tcp://HOST:PORT or ipc://PATH; the robot binds, the controller connects "
        "(--mode realtime: repeat it for several robots, robot i is slot i of one batched session)",
    )
    insecure: bool = setting(
        False, toml="insecure", flag="--insecure", check=checks.boolean, shared=True,
        argparse=(("action", "store_true"),),
        help="allow robot and telemetry endpoints off this machine without CURVE keys (docs/DAEMON.md, Keys)",
    )
    session: SessionSettings = group(SessionSettings)
    loop: RealtimeConfig = group(RealtimeConfig)
    telemetry: TelemetrySettings = group(TelemetrySettings)
    flight_recorder: FlightRecorderSettings = group(FlightRecorderSettings)
    recording: RecordingSettings = group(RecordingSettings)
    auth: AuthSettings = group(AuthSettings)
    origin: Path | None = None  # the config file these came from; None: the command line

    def label(self, name: str) -> str:
        """The setting `name` ("auth.keys") as its writer knows it: "--curve-keys" or "[auth] keys"."""
        return SETTINGS[name].label(self.origin)

    def describe(self, name: str) -> str:
        """What to set, for a message: "--curve-keys DIR" or "[auth] keys in FILE"."""
        return SETTINGS[name].describe(self.origin)


def walk(cls=ControllerSettings, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field]]:
    """(dotted attribute name, field) of every setting under `cls`, depth first, in field order."""
    for f in dataclasses.fields(cls):
        if "group" in f.metadata:
            yield from walk(f.metadata["group"], f"{prefix}{f.name}.")
        elif "setting" in f.metadata:
            yield prefix + f.name, f


SETTINGS: dict[str, Setting] = {name: f.metadata["setting"] for name, f in walk()}
DEFAULTS: dict[str, Any] = {name: f.default for name, f in walk()}  # MISSING: required


class MissingSetting(ValueError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def assemble(values: dict[str, Any], cls=ControllerSettings, prefix: str = "", **plain):
    """Settings of type `cls` from checked `values` ({"loop.fallback": ...}); a setting not in
    `values` gets its default. `plain`: top-level fields that are no settings (origin).
    Raises MissingSetting for a required one."""
    kwargs = dict(plain)
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        if "group" in f.metadata:
            kwargs[f.name] = assemble(values, f.metadata["group"], name + ".")
        elif name in values:
            kwargs[f.name] = values[name]
        elif "setting" in f.metadata and f.default is MISSING:
            raise MissingSetting(name)
    return cls(**kwargs)
