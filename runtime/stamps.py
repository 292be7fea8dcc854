"""Verify stamps: `<artifact>.verified.json`, written when `policyrt verify` passed on a compiled artifact.

A board-built artifact (a TensorRT engine, an IREE module) is only valid where it was built and is not
covered by the bundle's checksums, so its integrity is what the stamp records: the artifact's sha256 at
the time it reproduced parity.json, and the platform facts it was verified under (`keys`: GPU and
TensorRT version, or CPU). A backend checks both before it runs the artifact; a rebuilt, copied or
corrupted artifact then needs verify again.

Standard library only.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from policyrt.bundle import sha256_file

STAMP_SUFFIX = ".verified.json"
STAMP_FORMAT = 1


class StampError(RuntimeError):
    """The artifact has no verify stamp that matches it here."""


def stamp_path(artifact: Path) -> Path:
    return Path(artifact).with_name(Path(artifact).name + STAMP_SUFFIX)


def write_stamp(artifact: Path, keys: dict, tolerance: float, errors: dict, now: float | None = None) -> Path:
    """Record that `artifact` (its current bytes) passed verify under `keys`; returns the stamp's path."""
    artifact = Path(artifact)
    doc = {"format": STAMP_FORMAT, "engine": artifact.name, "engine_sha256": sha256_file(artifact), **keys,
           "tolerance": float(tolerance), "errors": errors,
           "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))}
    path = stamp_path(artifact)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)  # a half-written stamp must never exist under the real name
    return path


def check_stamp(artifact: Path, keys: dict, how: str, error: type[Exception] = StampError) -> dict:
    """The stamp (without `format`) if it matches the artifact's bytes and every one of `keys`; else
    `error` (one line ending with `how`: the command that verifies it)."""
    artifact = Path(artifact)
    path = stamp_path(artifact)
    how = f"run `{how}` on this machine"
    if not path.is_file():
        raise error(f"{artifact}: has not passed verify on this machine (no {path.name}); {how}")
    try:
        doc = json.loads(path.read_text())
        if not isinstance(doc, dict) or not isinstance(doc.get("engine_sha256"), str):
            raise ValueError("not a JSON object with engine_sha256")
        doc.pop("format", None)
    except ValueError as err:
        raise error(f"{path}: unreadable verify stamp ({err}); {how}") from err
    if doc.get("engine_sha256") != sha256_file(artifact):
        raise error(f"{artifact}: changed since it passed verify (sha256 differs from {path.name}); {how}")
    for field, current in keys.items():
        if doc.get(field) != current:
            raise error(f"{artifact}: verified with {field} {doc.get(field)!r}, this machine has {current!r}; {how}")
    return doc
