"""Tampered bundles of every kind (issue 12): each is refused with one line naming the file or field.

A seeded generator makes the tampered bundles from a copy of a shipped one: manifest fields set to NaN,
infinities, zero, negatives, wrong types, low > high, dims or state rows the graph disagrees with,
bogus dtypes; the digest missing or stale; `files` entries escaping the bundle (absolute, '..',
symlinks); unlisted files; a corrupt policy.onnx with the manifest re-hashed; ONNX external data
outside the bundle; .tar archives with unlisted, unsafe or oversized members. Each is opened and
given to the ONNX Runtime backend, as every command does. Counted: accepted (must be 0), refused with
any other exception than BundleError (a traceback in a command: must be 0), refused with a message
that does not name the file and the field, or that spans lines (must be 0). The fast part makes every
mutation of the table once; the slow part draws 1000 at random; `policyrt verify`, a real process,
prints one line and exits non-zero for one case of every kind.
"""


from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tamper_cases import (
    BASE,
    INF,
    NAN,
    Case,
    copy_base,
    field_case,
    files_case,
    manifest_doc,
    onnx_case,
    outside_file,
    rehash,
    unlisted_case,
)
from tamper_tar_cases import EVERY_CASE as CASES
from tamper_tar_cases import add_bytes, tar_case, tar_with

from policyrt import runtime
from policyrt.bundle import BundleError, open_bundle, pack_bundle, sha256_file

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")



def attempt(path: Path) -> tuple[str, str]:
    """What every command does with a bundle: open it and make the ONNX Runtime backend.
    -> ("accepted" | "refused" | "crashed", message)."""
    try:
        with open_bundle(path) as bundle:
            runtime.make_backend(bundle, "onnxruntime", 1).close()
    except BundleError as err:
        return "refused", str(err)
    except Exception as err:  # noqa: BLE001 - what the suite counts: any other exception is a traceback
        return "crashed", f"{type(err).__name__}: {err}"
    return "accepted", ""


def run_cases(cases: list[Case], tmp_path: Path) -> dict[str, list[str]]:
    """Every case made in its own work directory and attempted; the failures by what went wrong."""
    failures = {"accepted": [], "crashed": [], "unnamed": []}
    for i, case in enumerate(cases):
        work = tmp_path / f"case{i}"
        work.mkdir()
        outcome, message = attempt(case.make(work))
        if outcome != "refused":
            failures[outcome].append(f"{case.kind} {case.label}: {message}")
        elif "\n" in message or not all(name in message for name in case.names):
            failures["unnamed"].append(f"{case.kind} {case.label}: {message!r} lacks {case.names}")
        shutil.rmtree(work)
    return failures


def test_every_kind_of_tampered_bundle_is_refused_naming_the_file_and_field(tmp_path):
    failures = run_cases(CASES, tmp_path)
    assert {k: len(v) for k, v in failures.items()} == {"accepted": 0, "crashed": 0, "unnamed": 0}, failures
    assert {case.kind for case in CASES} == {"field", "graph", "digest", "files", "unlisted", "onnx", "external", "tar"}


def test_the_untampered_base_and_its_tar_are_accepted(tmp_path):
    """The control: the generator's base passes, so each refusal above is the tamper's."""
    bundle = copy_base(tmp_path)
    assert attempt(bundle) == ("accepted", "")
    assert attempt(pack_bundle(bundle, tmp_path / "t.policy.tar")) == ("accepted", "")


def test_external_data_inside_the_bundle_and_listed_loads(tmp_path):
    """ONNX external data is refused only where it leaves the bundle: listed data beside the graph runs."""
    bundle = copy_base(tmp_path)
    onnx.save(onnx.load(str(BASE / "policy.onnx")), str(bundle / "policy.onnx"), save_as_external_data=True,
              location="weights.bin", size_threshold=1024)
    rehash(bundle, manifest_doc(bundle))
    with runtime.load(bundle) as session:
        assert np.isfinite(session.step(np.zeros(4, np.float32))).all()


# One case of every kind, as `policyrt verify` meets it; every case in the slow set.
CLI_CASES = [next(c for c in CASES if c.kind == kind) for kind in dict.fromkeys(c.kind for c in CASES)]


def verify_refuses_in_one_line(case: Case, work: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "policyrt.cli", "verify", str(case.make(work))], capture_output=True,
                          text=True, timeout=120, cwd=work)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, (case.label, proc.stderr)
    assert len(lines) == 1 and all(name in lines[0] for name in case.names), (case.label, proc.stderr)


@pytest.mark.parametrize("case", CLI_CASES, ids=[f"{c.kind}-{c.label}" for c in CLI_CASES])
def test_verify_prints_one_line_naming_the_file_or_field(case, tmp_path):
    verify_refuses_in_one_line(case, tmp_path)


@pytest.mark.slow
def test_verify_prints_one_line_for_every_tampered_case(tmp_path):
    for i, case in enumerate(CASES):
        work = tmp_path / f"case{i}"
        work.mkdir()
        verify_refuses_in_one_line(case, work)
        shutil.rmtree(work)


def random_value(rng: np.random.Generator, pool: list):
    return pool[int(rng.integers(len(pool)))]


HOSTILE_NUMBERS = [NAN, INF, -INF, 1e39, -1e39, "1", True, False, None, [], {}, [1.0]]


def random_case(rng: np.random.Generator, index: int) -> Case:
    """One randomized tamper: a field set to a hostile value (or a bound pair crossed), a random file
    name escaping or unlisted, random bytes in the graph, or a random member added to a .tar."""
    kind = random_value(rng, ["bound", "dim", "scalar", "state", "crossed", "escape", "unlisted", "onnx", "tar"])
    name = "".join(random_value(rng, list("abcxyz._-")) for _ in range(int(rng.integers(1, 9)))) + f"{index}"
    if kind == "bound":
        key = random_value(rng, ["action_low", "action_high"])
        return field_case((key, 0), random_value(rng, HOSTILE_NUMBERS), f"{key}[0]")
    if kind == "dim":
        key = random_value(rng, ["obs_dim", "act_dim"])
        return field_case((key,), random_value(rng, [0, -1, -(1 << 40), 1 << 40, 10**400, 2.0, NAN, True, "4", None]), key)
    if kind == "scalar":
        key = random_value(rng, ["control_rate_hz", "target_return"])
        pool = [v for v in HOSTILE_NUMBERS if v is not None or key == "target_return"] + ([0, -1.0] if key == "control_rate_hz" else [])
        return field_case((key,), random_value(rng, pool), key)
    if kind == "state":
        row = int(rng.integers(9))
        key = random_value(rng, ["dtype", "shape", "init"])
        pool = {"dtype": ["float64", "int64", "uint8", "bool", "", 1, None],
                "shape": [[0], [-2], [2.5], "x", None, [1, 0], [1 << 30]],
                "init": [NAN, INF, -INF, "0", None, [0.0]]}[key]
        return field_case(("state", row, key), random_value(rng, pool), f"state[{row}]", key)
    if kind == "crossed":
        low, high = sorted(rng.uniform(-10, 10, 2))
        return field_case(("action_low", 0), float(high) + float(rng.uniform(0, 5)), "action_low[0]", "action_high[0]",
                          extra={"action_high": [float(low)]})
    if kind == "escape":
        rel = random_value(rng, [f"../{name}", f"reference/../../{name}", f"/tmp/{name}", f"./{name}", f"a//{name}"])
        return files_case(f"escape {rel}", lambda w, b: {rel: sha256_file(outside_file(w))}, rel)
    if kind == "unlisted":
        return unlisted_case(random_value(rng, [name, f"reference/{name}", f"{name}/{name}", f".{name}"]))
    if kind == "onnx":
        cut = float(rng.uniform(0.0, 0.9))
        return onnx_case(f"truncated at {cut:.2f}", lambda data, r: data[: int(len(data) * cut)] + r.bytes(int(r.integers(0, 64))),
                         seed=index)
    member = random_value(rng, [f"t.policy/{name}", f"t.policy/reference/{name}", f"{name}/x", f"t.policy/../{name}"])
    return tar_case(f"tar member {member}", tar_with(add_bytes(member), before=bool(rng.integers(2))), member)


@pytest.mark.slow
def test_a_thousand_random_tampers_are_all_refused(tmp_path):
    rng = np.random.default_rng(12)
    cases = [random_case(rng, i) for i in range(1000)]
    failures = run_cases(cases, tmp_path)
    assert {k: len(v) for k, v in failures.items()} == {"accepted": 0, "crashed": 0, "unnamed": 0}, failures
    assert {c.kind for c in cases} == {"field", "files", "unlisted", "onnx", "tar"}
