"""The tampered bundles of tests/test_bundle_tamper.py (archives: tests/tamper_tar_cases.py): one table per kind, each case a function that
makes the tampered bundle (directory or archive) from a copy of a shipped one in a fresh work
directory, and the names its refusal must carry (the file, the field). A careful tamperer is
assumed: wherever the tamper leaves the manifest JSON can hold, checksums and digest are re-written
to match, so that only the check under test can refuse it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from policyrt.bundle import DIGEST_FILE, bundle_digest, sha256_file, write_manifest

onnx = pytest.importorskip("onnx")

BASE = ROOT / "bundles" / "inverted-pendulum-xlstm.policy"  # obs_dim 4, act_dim 1, state[0] = rtg [1]
NAN, INF = float("nan"), float("inf")
DELETE = object()  # a mutation value: remove the key


@dataclass(frozen=True)
class Case:
    kind: str
    label: str
    make: Callable[[Path], Path]  # a fresh work directory -> the bundle (directory or archive) to open
    names: tuple[str, ...]  # every one must appear in the refusal


def copy_base(work: Path) -> Path:
    return Path(shutil.copytree(BASE, work / "t.policy"))


def manifest_doc(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def rehash(bundle: Path, doc: dict) -> Path:
    """The manifest written as a careful tamperer would: checksums and digest to match. A doc that
    JSON cannot hold (NaN) is written as it is, beside the old digest."""
    doc = {k: v for k, v in doc.items() if k != "files"}
    try:
        write_manifest(bundle, doc)
    except ValueError:  # allow_nan=False
        files = manifest_doc(bundle)["files"]
        (bundle / "manifest.json").write_text(json.dumps({**doc, "files": files}))
    return bundle


def write_with_files(bundle: Path, extra: dict) -> Path:
    """The manifest with `extra` entries added to `files`, digest re-written to match."""
    doc = manifest_doc(bundle)
    doc["files"].update(extra)
    (bundle / "manifest.json").write_text(json.dumps(doc))
    (bundle / DIGEST_FILE).write_text(bundle_digest(doc) + "\n")
    return bundle


def set_path(doc: dict, path: tuple, value) -> None:
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = value


def field_case(path: tuple, value, *names: str, extra: dict | None = None) -> Case:
    """Manifest field `path` set to `value` (and top-level `extra` fields), re-hashed."""

    def make(work: Path) -> Path:
        bundle = copy_base(work)
        doc = manifest_doc(bundle)
        doc.update(extra or {})
        set_path(doc, path, value)
        return rehash(bundle, doc)

    label = ".".join(map(str, path)) + f"={value!r}"[:40]
    return Case("field", label, make, ("manifest.json", *names))


def graph_case(label: str, changes: dict, *names: str) -> Case:
    """A manifest that is valid on its own but disagrees with the graph: refused at load."""

    def make(work: Path) -> Path:
        bundle = copy_base(work)
        doc = manifest_doc(bundle)
        for path, value in changes.items():
            set_path(doc, path, value)
        return rehash(bundle, doc)

    return Case("graph", label, make, ("policy.onnx", *names))


def state_rows(edit: Callable[[list], None]) -> list:
    rows = manifest_doc(BASE)["state"]
    edit(rows)
    return rows


FIELDS = [
    *(field_case(("action_low", 0), v, "action_low[0]") for v in (NAN, INF, -INF, "1.0", True, None, 1e39)),
    *(field_case(("action_high", 0), v, "action_high[0]") for v in (NAN, INF, "x", None)),
    field_case(("action_low", 0), 3.0, "action_low[0]", "action_high[0]"),  # low == high
    field_case(("action_low", 0), 5.0, "action_low[0]", "action_high[0]"),  # low > high
    field_case(("action_low",), [-3.0, -3.0], "action_low", "act_dim"),
    field_case(("action_high",), "3", "action_high"),
    *(field_case(("obs_dim",), v, "obs_dim") for v in (0, -1, 1 << 40, True, 2.5, "4", None, DELETE)),
    *(field_case(("act_dim",), v, "act_dim") for v in (0, -1, False, 1.0)),
    field_case(("act_dim",), 2, "action_low", "act_dim"),
    *(field_case(("control_rate_hz",), v, "control_rate_hz") for v in (0, -25, NAN, INF, "25", True)),
    *(field_case(("target_return",), v, "target_return") for v in (NAN, INF, -INF, 1e39, "high", None, True)),
    *(field_case(("state", 0, "dtype"), v, "state[0]", "dtype") for v in ("float65", "int64", "float16", 7)),
    *(field_case(("state", 0, "shape"), v, "state[0]", "shape") for v in ([0], [-1], [1.5], [True], "1", [1 << 14, 1 << 14])),
    *(field_case(("state", 0, "init"), v, "state[0]", "init") for v in (NAN, INF, -1e39, "0", None)),
    field_case(("state", 0, "dtype"), "int32", "state[0]", "init", extra={"state": state_rows(
        lambda rows: rows[0].update(init=0.5))}),
    *(field_case(("state", 0, "name"), v, "state[0]", "name") for v in ("", 5)),
    field_case(("state", 0, "shape"), DELETE, "state[0]", "shape"),
    field_case(("state", 1, "name"), "rtg", "state[1]", "rtg"),
    field_case(("state",), "x", "state"),
    field_case(("state", 0), 3, "state[0]"),
    field_case(("inputs",), ["reset", "reward", "prev_action", "obs", "target_return"], "inputs"),
    field_case(("inputs",), ["obs"], "inputs"),
    *(field_case(("name",), v, "name") for v in ("", 5, None)),
    *(field_case(("policy", "kind"), v, "policy.kind") for v in ("", 7)),
    field_case(("policy",), "xlstm", "policy"),
    field_case(("obs_names",), ["a"], "obs_names", "obs_dim"),
    field_case(("obs_names",), [1, 2, 3, 4], "obs_names"),
    field_case(("action_names",), ["a", "b"], "action_names", "act_dim"),
    field_case(("obs_low",), [0.0] * 4, "obs_low", "obs_high", extra={"obs_high": None}),  # one without the other
    field_case(("obs_low",), [0.0, NAN, 0.0, 0.0], "obs_low[1]", extra={"obs_high": [1.0] * 4}),
    field_case(("obs_low",), [0.0, 2.0, 0.0, 0.0], "obs_low[1]", "obs_high[1]", extra={"obs_high": [1.0] * 4}),
    field_case(("obs_low",), [0.0] * 3, "obs_low", "obs_dim", extra={"obs_high": [1.0] * 4}),
    *(Case("field", f"schema_version {v!r} by hand", lambda w, v=v: _edited(copy_base(w), schema_version=v),
           ("manifest.json", "schema_version")) for v in (2, None)),
]

GRAPH = [
    *(graph_case(f"obs_dim {n}", {("obs_dim",): n, ("obs_low",): DELETE, ("obs_high",): DELETE}, "obs_dim", "obs")
      for n in (3, 5)),
    graph_case("act_dim 2", {("act_dim",): 2, ("action_low",): [-3.0, -3.0], ("action_high",): [3.0, 3.0]},
               "act_dim", "prev_action"),
    graph_case("rtg shape [2]", {("state", 0, "shape"): [2]}, "state 'rtg'", "state.rtg"),
    graph_case("rtg int32", {("state", 0, "dtype"): "int32"}, "state 'rtg'", "int32"),
    graph_case("a state row missing", {("state",): state_rows(lambda rows: rows.pop())}, "state.block1.conv"),
    graph_case("a state row added", {("state",): state_rows(lambda rows: rows.append({"name": "extra", "shape": [1]}))},
               "state 'extra'", "state.extra"),
]


def digest_case(label: str, edit: Callable[[Path], None], *names: str) -> Case:
    def make(work: Path) -> Path:
        bundle = copy_base(work)
        edit(bundle)
        return bundle

    return Case("digest", label, make, names)


def edit_manifest(bundle: Path, **changes) -> None:
    """A hand edit: the manifest changed, the digest left as it was."""
    (bundle / "manifest.json").write_text(json.dumps({**manifest_doc(bundle), **changes}, indent=2))


def _edited(bundle: Path, **changes) -> Path:
    edit_manifest(bundle, **changes)
    return bundle


DIGEST = [
    digest_case("valid field edited by hand", lambda b: edit_manifest(b, target_return=999.0),
                "manifest.json", "changed since it was written"),
    digest_case("action bound widened by hand", lambda b: edit_manifest(b, action_high=[30.0]),
                "manifest.json", "changed since it was written"),
    digest_case("digest removed", lambda b: (b / DIGEST_FILE).unlink(), "bundle.sha256", "missing"),
    digest_case("digest garbage", lambda b: (b / DIGEST_FILE).write_text("not a digest\n"), "bundle.sha256"),
    digest_case("digest of another bundle", lambda b: shutil.copy(ROOT / "bundles" / "reacher-xlstm.policy" / DIGEST_FILE, b),
                "manifest.json", "changed since it was written"),
    digest_case("NaN outside the schema", lambda b: edit_manifest(b, provenance={"x": NAN}), "manifest.json", "NaN"),
    digest_case("manifest not JSON", lambda b: (b / "manifest.json").write_text("{not json"), "manifest.json"),
    digest_case("manifest a list", lambda b: (b / "manifest.json").write_text("[1]"), "manifest.json"),
    digest_case("manifest huge", lambda b: (b / "manifest.json").write_text(" " * (5 << 20) + "{}"), "manifest.json"),
]


def outside_file(work: Path, name: str = "outside.bin") -> Path:
    path = work / name
    path.write_bytes(b"outside the bundle\n")
    return path


def files_case(label: str, make_entry: Callable[[Path, Path], dict], *names: str) -> Case:
    """`files` with an entry made by make_entry(work, bundle), its hash right and the digest to match."""

    def make(work: Path) -> Path:
        bundle = copy_base(work)
        return write_with_files(bundle, make_entry(work, bundle))

    return Case("files", label, make, ("manifest.json", *names) if not label.startswith("symlink") else names)


def symlinked(work: Path, bundle: Path, name: str) -> dict:
    target = outside_file(work)
    os.symlink(target, bundle / name)
    return {name: sha256_file(target)}


def swap_reference_for_a_link(work: Path, bundle: Path) -> dict:
    shutil.move(bundle / "reference", work / "reference-outside")
    os.symlink(work / "reference-outside", bundle / "reference")
    return {}


HOSTNAME = Path("/etc/hostname")
FILES = [
    files_case("absolute /etc/hostname", lambda w, b: {str(HOSTNAME): sha256_file(HOSTNAME)}, "/etc/hostname", "absolute"),
    files_case("absolute outside file", lambda w, b: {str(outside_file(w)): sha256_file(outside_file(w))}, "absolute"),
    files_case("../outside.bin", lambda w, b: {"../outside.bin": sha256_file(outside_file(w))}, "../outside.bin", ".."),
    files_case("reference/../../outside.bin", lambda w, b: {"reference/../../outside.bin": sha256_file(outside_file(w))},
               "reference/../../outside.bin"),
    files_case("./policy.onnx", lambda w, b: {"./policy.onnx": sha256_file(b / "policy.onnx")}, "./policy.onnx"),
    files_case("reference//config.json", lambda w, b: {"reference//config.json": sha256_file(b / "reference/config.json")},
               "reference//config.json"),
    files_case("lists manifest.json", lambda w, b: {"manifest.json": "0" * 64}, "manifest.json"),
    files_case("lists engines/", lambda w, b: {"engines/x.plan": "0" * 64}, "engines/x.plan"),
    files_case("hash not hex", lambda w, b: {"policy.onnx": "xyz"}, "policy.onnx", "sha256"),
    files_case("symlink out, listed", lambda w, b: symlinked(w, b, "link.bin"), "link.bin", "outside the bundle"),
    files_case("symlink reference/ out", swap_reference_for_a_link, "reference/", "outside the bundle"),
    Case("files", "listed file changed", lambda w: _flip_byte(copy_base(w) / "parity.json"), ("parity.json", "sha256")),
    Case("files", "listed file missing", lambda w: _remove(copy_base(w) / "parity.json"), ("parity.json", "missing")),
    Case("files", "files not an object", lambda w: write_files_doc(copy_base(w), ["policy.onnx"]), ("manifest.json", "files")),
]


def _flip_byte(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x20
    path.write_bytes(bytes(data))
    return path.parent


def _remove(path: Path) -> Path:
    path.unlink()
    return path.parent


def write_files_doc(bundle: Path, files) -> Path:
    doc = {**manifest_doc(bundle), "files": files}
    (bundle / "manifest.json").write_text(json.dumps(doc))
    (bundle / DIGEST_FILE).write_text(bundle_digest(doc) + "\n")
    return bundle


def unlisted_case(rel: str, link_to: Path | None = None) -> Case:
    def make(work: Path) -> Path:
        bundle = copy_base(work)
        path = bundle / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if link_to is not None:
            os.symlink(link_to, path)
        else:
            path.write_bytes(b"\0" * 1024)
        return bundle

    return Case("unlisted", f"unlisted {rel}", make, (rel, "not listed"))


UNLISTED = [
    unlisted_case("extra.bin"),
    unlisted_case("reference/extra.txt"),
    unlisted_case("new/deeper/payload.so"),
    unlisted_case(".DS_Store"),
    unlisted_case("hostname", link_to=HOSTNAME),
    unlisted_case("etc", link_to=Path("/etc")),
]


def onnx_case(label: str, corrupt: Callable[[bytes, np.random.Generator], bytes], seed: int = 0) -> Case:
    """policy.onnx replaced by corrupt(original), the manifest re-hashed: only ONNX Runtime can tell."""

    def make(work: Path) -> Path:
        bundle = copy_base(work)
        onnx_file = bundle / "policy.onnx"
        onnx_file.write_bytes(corrupt(onnx_file.read_bytes(), np.random.default_rng(seed)))
        return rehash(bundle, manifest_doc(bundle))

    return Case("onnx", label, make, ("policy.onnx", "ONNX Runtime cannot load the step graph"))


ONNX = [
    onnx_case("random bytes", lambda data, rng: rng.bytes(len(data))),
    onnx_case("empty", lambda data, rng: b""),
    onnx_case("truncated at 100 bytes", lambda data, rng: data[:100]),
    onnx_case("truncated at half", lambda data, rng: data[: len(data) // 2]),
    onnx_case("garbage prepended", lambda data, rng: rng.bytes(64) + data),
]


def external_data_model(location: str, length: int | None = None) -> onnx.ModelProto:
    """The shipped step graph with its largest initializer moved to external data at `location`."""
    model = onnx.load(str(BASE / "policy.onnx"))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    size = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length or size))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return model


def external_case(label: str, location: Callable[[Path], str]) -> Case:
    def make(work: Path) -> Path:
        bundle = copy_base(work)
        (work / "big.bin").write_bytes(b"\0" * (1 << 17))  # outside, long enough for the tensor
        onnx.save(external_data_model(location(work)), str(bundle / "policy.onnx"))
        return rehash(bundle, manifest_doc(bundle))

    return Case("external", label, make, ("policy.onnx", "External data"))


EXTERNAL = [
    external_case("../../../etc/hostname", lambda work: "../../../etc/hostname"),
    external_case("../big.bin", lambda work: "../big.bin"),
    external_case("absolute path", lambda work: str(work / "big.bin")),
    external_case("missing file inside", lambda work: "weights.bin"),
]


CASES = [*FIELDS, *GRAPH, *DIGEST, *FILES, *UNLISTED, *ONNX, *EXTERNAL]  # the tar cases: tests/tamper_tar_cases.py
