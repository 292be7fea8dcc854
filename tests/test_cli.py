"""Every subcommand answers --help; info reads a bundle and refuses a broken one."""

from __future__ import annotations

import subprocess
import sys

import pytest

from policyrt.cli import main

COMMANDS = [[], ["sim"], ["sim", "collect"], ["sim", "serve"], ["train"], ["train", "xlstm"], ["train", "dt"], ["export"],
            ["info"], ["lint"], ["build-engine"], ["verify"], ["compare"], ["run"], ["eval"], ["bench"], ["demo"]]


@pytest.mark.parametrize("words", COMMANDS, ids=lambda w: " ".join(w) or "policyrt")
def test_help(words, capsys):
    with pytest.raises(SystemExit) as done:
        main([*words, "--help"])
    assert done.value.code == 0
    assert "usage: policyrt" in capsys.readouterr().out


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "policyrt.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("policyrt ")


def test_info_prints_the_manifest(tiny_bundle, capsys):
    assert main(["info", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    assert "block1.C" in out and "parity      onnxruntime" in out


def test_info_refuses_a_corrupted_bundle(tiny_bundle, tmp_path, capsys):
    import shutil

    copy = shutil.copytree(tiny_bundle, tmp_path / "c.policy")
    (copy / "parity.json").write_text("{}")
    assert main(["info", str(copy)]) == 1
    assert "parity.json: sha256 does not match" in capsys.readouterr().err


@pytest.mark.parametrize("backend, message", [("tpu", "unknown backend 'tpu'"), ("tensorrt", "TensorRT")])
def test_run_refuses_an_unusable_backend_in_one_line(tiny_bundle, capsys, backend, message):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here: the unverified-engine path is tested in the TensorRT tests")
    assert main(["run", str(tiny_bundle), "--connect", "ipc:///tmp/policyrt-never.sock", "--backend", backend]) == 2
    err = capsys.readouterr().err
    assert err.startswith("policyrt run:") and message in err and "Traceback" not in err


SESSION_COMMANDS = ["run", "eval", "bench", "verify", "compare", "demo"]


@pytest.mark.parametrize("command", SESSION_COMMANDS)
def test_every_command_that_loads_a_session_takes_the_one_session_group(command, capsys):
    """--backend/--threads/--target-return come from one definition, with one default backend."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps help lines
    assert "--backend NAME" in out and "(default: onnxruntime)" in out and "--threads N" in out
    # verify replays the returns parity.json recorded: a commanded return would mean nothing there.
    assert ("--target-return R" in out) == (command != "verify")


def test_bench_refuses_session_flags_without_the_closed_loop(tiny_bundle, capsys):
    assert main(["bench", str(tiny_bundle), "--backend", "torch"]) == 2
    assert "--backend only apply with --loop" in capsys.readouterr().err


def test_a_command_without_its_extra_says_which_extra_in_one_line(monkeypatch, capsys):
    # sys.modules[name] = None makes `import name` raise ModuleNotFoundError, as on a board with [cpu] only.
    import sys

    from policyrt.cli import main

    monkeypatch.setitem(sys.modules, "gymnasium", None)
    assert main(["sim", "serve", "--env", "InvertedPendulum-v5", "--bind", "tcp://127.0.0.1:5997"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "policyrt sim serve: needs gymnasium, which this install lacks: pip install 'policyrt[sim]'"
