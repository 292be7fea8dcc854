"""controllers/config.py: the daemon's TOML config is read strictly into the controller's settings
(controllers/settings.py); every error names the file, the key and what is allowed. The command
line reads the same schema: a value the file refuses, `policyrt run` refuses with the same text."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from policyrt.controllers.config import ConfigError, load_config
from policyrt.controllers.settings import ControllerSettings

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
    assert isinstance(cfg, ControllerSettings) and cfg.origin == tmp_path / "controller.toml"
    assert cfg.bundle == tmp_path.resolve() / "pendulum.policy"
    assert cfg.robots == ("tcp://127.0.0.1:5555",)
    assert cfg.session.backend == "onnxruntime" and cfg.loop.rate_hz is None and not cfg.insecure
    assert cfg.session.threads == 1 and cfg.session.target_return is None
    assert cfg.loop.fallback == "hold" and cfg.loop.max_delta is None and cfg.loop.spin_us == 200
    assert cfg.loop.obs_range_factor == 10.0
    assert cfg.loop.sched_fifo_priority == 0 and cfg.loop.cpu_affinity == ()
    assert cfg.telemetry.pub is None and cfg.flight_recorder.dir is None and cfg.auth.keys is None


FULL = """
backend = "onnxruntime"
threads = 2
target_return = 500.0
rate_hz = 500
insecure = false
[safety]
fallback = [0.0, 0.5]
max_delta = [0.1, 0.2]
stale_after_s = 0.01
obs_range_factor = 3
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
format = "minari"
[auth]
keys = "keys"
client = "ctl-1"
"""


def test_full_config(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + FULL))
    assert cfg.loop.rate_hz == 500.0 and cfg.session.threads == 2 and cfg.session.target_return == 500.0
    assert cfg.loop.fallback == (0.0, 0.5) and cfg.loop.max_delta == (0.1, 0.2)
    assert cfg.loop.stale_after_s == 0.01 and cfg.loop.spin_us == 100 and cfg.loop.lock_memory
    assert cfg.loop.obs_range_factor == 3.0
    assert cfg.loop.sched_fifo_priority == 80 and cfg.loop.cpu_affinity == (1,)
    assert cfg.telemetry.pub == "tcp://127.0.0.1:5600" and cfg.telemetry.prometheus_port == 9100
    assert cfg.flight_recorder.dir == Path("/var/lib/policyrt") and cfg.flight_recorder.ticks == 500
    assert cfg.recording.dataset is None and cfg.recording.format == "minari"
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
        ("threads = 0", ["threads = 0", "1..256"]),
        ("[recording]\nformat = 'csv'", ["recording.format = 'csv'", "npz"]),
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


# --- one schema, two front-ends: the file and `policyrt run`'s flags ---


def _run_settings(*flags: str):
    from policyrt.cli import build_parser
    from policyrt.commands._realtime_args import settings_from_args

    return settings_from_args(build_parser().parse_args(["run", *flags]))


def test_the_command_line_and_the_file_produce_the_same_settings(tmp_path):
    text = f'bundle = "{tmp_path / "b.policy"}"\nrobots = ["ipc:///tmp/a", "ipc:///tmp/b"]\n' + FULL.replace(
        'keys = "keys"', f'keys = "{tmp_path / "keys"}"'
    ).replace('dataset = ""', f'dataset = "{tmp_path / "episodes"}"')
    from_file = load_config(write(tmp_path, text))
    from_flags = _run_settings(
        str(tmp_path / "b.policy"), "--connect", "ipc:///tmp/a", "--connect", "ipc:///tmp/b",
        "--backend", "onnxruntime", "--threads", "2", "--target-return", "500", "--rate", "500",
        "--fallback", "0.0,0.5", "--max-delta", "0.1,0.2", "--stale-after", "0.01", "--obs-range-factor", "3",
        "--spin-us", "100",
        "--sched-fifo", "80", "--cpu", "1", "--lock-memory", "--telemetry", "tcp://127.0.0.1:5600",
        "--prometheus-port", "9100", "--record-dir", "/var/lib/policyrt", "--record-ticks", "500",
        "--record-episodes", str(tmp_path / "episodes"), "--episodes-format", "minari",
        "--curve-keys", str(tmp_path / "keys"), "--curve-client", "ctl-1",
    )
    assert from_flags == replace(from_file, origin=None)
    # Left out, each side gets the schema's defaults.
    assert _run_settings("b.policy", "--connect", "ipc:///tmp/a") == replace(
        load_config(write(tmp_path, 'bundle = "/b.policy"\nrobots = ["ipc:///tmp/a"]\n')),
        bundle=Path("b.policy"), origin=None,
    )


@pytest.mark.parametrize(
    "line, flags, allowed",
    [
        ("rate_hz = -5", ["--rate", "-5"], "a number > 0"),
        ("[safety]\nfallback = 'brake'", ["--fallback", "brake"], '"hold", "zero", or a list of numbers'),
        ("[safety]\nmax_delta = 0", ["--max-delta", "0"], "a number > 0, or a list"),
        ("[realtime]\nsched_fifo_priority = 120", ["--sched-fifo", "120"], "an integer in 1..99, or 0 for normal"),
        ("[realtime]\nspin_us = -1", ["--spin-us", "-1"], "an integer in 0..1000000"),
        ("[safety]\nobs_range_factor = -1", ["--obs-range-factor", "-1"], "a number >= 0 (0: off)"),
        ("[telemetry]\npub = '127.0.0.1:5600'", ["--telemetry", "127.0.0.1:5600"], "a ZeroMQ endpoint string"),
        ("[flight_recorder]\nticks = 4", ["--record-ticks", "4"], "an integer in 8..10000000"),
    ],
)
def test_a_value_the_file_refuses_the_command_line_refuses_with_the_same_words(tmp_path, capsys, line, flags, allowed):
    with pytest.raises(ConfigError, match="expected " + re.escape(allowed)):
        load_config(write(tmp_path, MINIMAL + line + "\n"))
    with pytest.raises(SystemExit) as done:
        _run_settings("b.policy", "--connect", "ipc:///tmp/a", "--mode", "realtime", *flags)
    assert done.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith(f"policyrt run: error: argument {flags[0]}: expected {allowed}") and flags[1] in err


def test_every_setting_has_a_key_a_flag_and_documentation():
    from policyrt.controllers.settings import SETTINGS

    example = (ROOT / "deploy" / "controller.toml").read_text()
    daemon_doc = (ROOT / "docs" / "DAEMON.md").read_text()
    for name, setting in SETTINGS.items():
        section, _, key = setting.toml.rpartition(".")
        assert setting.flag and setting.help, name
        assert re.search(rf"^#? ?{key} = ", example, re.M), f"{setting.toml} is not in deploy/controller.toml"
        assert (f"`[{section}] {key}" if section else f"`{key}`") in daemon_doc, f"{setting.toml} not in DAEMON.md"
