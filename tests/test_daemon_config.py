"""controllers/config.py: the daemon's TOML config is read strictly; every error names the file,
the key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from policyrt.controllers.config import ConfigError, ControllerConfig, load_config

ROOT = Path(__file__).resolve().parents[1]

MINIMAL = """
bundle = "pendulum.policy"
robots = ["tcp://127.0.0.1:5555"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "controller.toml"
    path.write_text(text)
    return path


def test_minimal_config_gets_the_defaults_and_resolves_paths_from_the_file(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert isinstance(cfg, ControllerConfig)
    assert cfg.bundle == tmp_path.resolve() / "pendulum.policy"
    assert cfg.robots == ("tcp://127.0.0.1:5555",)
    assert cfg.backend == "auto" and cfg.rate_hz is None and not cfg.insecure
    assert cfg.safety.fallback == "hold" and cfg.safety.max_delta is None
    assert cfg.telemetry.pub is None and cfg.flight_recorder.dir is None and cfg.auth.keys is None


FULL = """
backend = "onnxruntime"
rate_hz = 500
insecure = false
[safety]
fallback = [0.0, 0.5]
max_delta = [0.1, 0.2]
stale_after_s = 0.01
[realtime]
spin_us = 100
sched_fifo_priority = 80
cpu_affinity = [1]
lock_memory = true
[telemetry]
pub = "tcp://127.0.0.1:5600"
prometheus_port = 9100
[flight_recorder]
dir = "/var/lib/policyrt"
ticks = 500
[recording]
dataset = ""
[auth]
keys = "keys"
client = "ctl-1"
"""


def test_full_config(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + FULL))
    assert cfg.rate_hz == 500.0
    assert cfg.safety.fallback == (0.0, 0.5) and cfg.safety.max_delta == (0.1, 0.2)
    assert cfg.realtime.sched_fifo_priority == 80 and cfg.realtime.cpu_affinity == (1,)
    assert cfg.telemetry.prometheus_port == 9100
    assert cfg.flight_recorder.dir == Path("/var/lib/policyrt") and cfg.flight_recorder.ticks == 500
    assert cfg.recording.dataset is None
    assert cfg.auth.keys == tmp_path.resolve() / "keys" and cfg.auth.client == "ctl-1"


def test_the_shipped_example_config_is_valid():
    cfg = load_config(ROOT / "deploy" / "controller.toml")
    assert cfg.robots


@pytest.mark.parametrize(
    "extra, needles",
    [
        ("rate_hx = 5", ["unknown key 'rate_hx'", "the top level", "rate_hz"]),
        ("[safety]\nfalback = 'hold'", ["unknown key 'falback'", "[safety]", "fallback"]),
        ("[saftey]\nfallback = 'hold'", ["unknown key 'saftey'", "[safety]"]),
        ("rate_hz = -5", ["rate_hz = -5", "a number > 0"]),
        ("rate_hz = true", ["rate_hz = True", "a number > 0"]),
        ("backend = 'gpu9000'", ["backend = 'gpu9000'", "onnxruntime"]),
        ("[safety]\nfallback = 'brake'", ["safety.fallback = 'brake'", '"hold", "zero"']),
        ("[safety]\nmax_delta = 0", ["safety.max_delta = 0", "> 0"]),
        ("[realtime]\nsched_fifo_priority = 120", ["realtime.sched_fifo_priority = 120", "1..99"]),
        ("[realtime]\ncpu_affinity = 'all'", ["realtime.cpu_affinity", "CPU numbers"]),
        ("[telemetry]\npub = '127.0.0.1:5600'", ["telemetry.pub", "tcp://HOST:PORT"]),
        ("[telemetry]\nprometheus_port = 70000", ["prometheus_port = 70000", "1..65535"]),
        ("safety = 3", ["'safety' must be a table"]),
    ],
)
def test_bad_keys_and_values_are_named(tmp_path, extra, needles):
    path = write(tmp_path, MINIMAL + extra + "\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message


def test_required_keys_missing_file_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'robots'"):
        load_config(write(tmp_path, 'bundle = "b.policy"\n'))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "bundle = \n"))
    with pytest.raises(ConfigError, match="all different"):
        load_config(write(tmp_path, 'bundle = "b"\nrobots = ["ipc:///tmp/a", "ipc:///tmp/a"]\n'))
