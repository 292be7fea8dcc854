"""The bundle: `NAME.policy/` with manifest.json, policy.onnx, parity.json (optionally packed as .tar).

A bundle whose schema version is unknown, a file is missing, or a checksum does not match is refused
with an error that names the file. See docs/BUNDLE.md for every field.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .contract import StateTensor

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
# Engines are built on the board after the bundle was made; they carry their own verify stamps.
UNCHECKED_DIRS = ("engines",)
# Signatures over the bundle digest (policyrt/signing.py): outside `files` and the digest, so that
# signing changes nothing that is signed.
SIGNATURES = "signatures.json"


class BundleError(ValueError):
    """The bundle cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Manifest:
    name: str
    kind: str
    obs_dim: int
    act_dim: int
    action_low: np.ndarray
    action_high: np.ndarray
    state: tuple[StateTensor, ...]
    inputs: tuple[str, ...]  # as recorded; the step graph's are policyrt.contract.INPUTS
    target_return: float
    control_rate_hz: float | None = None
    env_id: str | None = None
    obs_names: tuple[str, ...] | None = None
    action_names: tuple[str, ...] | None = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, doc: dict, where: str = MANIFEST) -> Manifest:
        version = doc.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BundleError(f"{where}: unknown schema_version {version!r} (this policyrt reads {SCHEMA_VERSION})")
        try:
            act_dim = int(doc["act_dim"])
            return cls(
                name=str(doc["name"]),
                kind=str(doc["policy"]["kind"]),
                obs_dim=int(doc["obs_dim"]),
                act_dim=act_dim,
                action_low=_vector(doc["action_low"], act_dim, "action_low", where),
                action_high=_vector(doc["action_high"], act_dim, "action_high", where),
                state=tuple(StateTensor.from_dict(row) for row in doc["state"]),
                inputs=tuple(doc["inputs"]),
                target_return=float(doc["target_return"]),
                control_rate_hz=doc.get("control_rate_hz"),
                env_id=doc.get("env_id"),
                obs_names=tuple(doc["obs_names"]) if doc.get("obs_names") else None,
                action_names=tuple(doc["action_names"]) if doc.get("action_names") else None,
                raw=doc,
            )
        except KeyError as err:
            raise BundleError(f"{where}: missing field {err.args[0]!r}") from err
        except (TypeError, ValueError) as err:
            raise BundleError(f"{where}: malformed field: {err}") from err


def _vector(values, n: int, name: str, where: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32)
    if array.shape != (n,):
        raise BundleError(f"{where}: {name} has shape {array.shape}, expected ({n},)")
    return array


def bundle_digest(doc: dict) -> str:
    """sha256 (hex) of the canonical JSON of the manifest without `engines`: the manifest lists the
    sha256 of every file, so this covers the whole bundle except the engines built on a board."""
    canonical = json.dumps({k: v for k, v in doc.items() if k != "engines"}, sort_keys=True,
                           separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Bundle:
    path: Path
    manifest: Manifest

    @property
    def onnx_path(self) -> Path:
        return self.path / "policy.onnx"

    @property
    def parity_path(self) -> Path:
        return self.path / "parity.json"

    def parity(self) -> dict:
        return json.loads(self.parity_path.read_text())

    @property
    def digest(self) -> str:
        return bundle_digest(self.manifest.raw)


def open_bundle(path, verify_checksums: bool = True) -> Bundle:
    """Open `NAME.policy/` or `NAME.policy.tar`; checks schema, presence and sha256 of every file."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle (expected a NAME.policy directory or .tar)")
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise BundleError(f"{path}: not a bundle directory and not a tar archive")
        path = _unpack(path)
    manifest_file = path / MANIFEST
    if not manifest_file.is_file():
        raise BundleError(f"{manifest_file}: missing (is {path} a bundle?)")
    try:
        doc = json.loads(manifest_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{manifest_file}: not valid JSON ({err})") from err
    manifest = Manifest.from_dict(doc, where=str(manifest_file))
    files = doc.get("files")
    if not isinstance(files, dict) or "policy.onnx" not in files:
        raise BundleError(f"{manifest_file}: 'files' must list every file with its sha256, policy.onnx included")
    for rel, expected in files.items():
        member = path / rel
        if not member.is_file():
            raise BundleError(f"{member}: listed in the manifest but missing")
        if verify_checksums and sha256_file(member) != expected:
            raise BundleError(f"{member}: sha256 does not match the manifest (file changed or corrupted)")
    return Bundle(path=path, manifest=manifest)


def _unpack(archive: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="policyrt-bundle-"))
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            # Refuse anything that would land outside the target directory or is not a plain file/dir.
            dest = (target / member.name).resolve()
            if not str(dest).startswith(str(target.resolve())) or not (member.isfile() or member.isdir()):
                raise BundleError(f"{archive}: unsafe member {member.name!r}")
        tar.extractall(target)  # noqa: S202 - members checked above
    found = [p.parent for p in target.rglob(MANIFEST)]
    if len(found) != 1:
        raise BundleError(f"{archive}: expected exactly one {MANIFEST} inside, found {len(found)}")
    return found[0]


def write_manifest(bundle_dir: Path, doc: dict) -> None:
    """Fill in `files` (sha256 of everything but the manifest and engines/) and write manifest.json."""
    bundle_dir = Path(bundle_dir)
    files = {}
    for member in sorted(bundle_dir.rglob("*")):
        rel = member.relative_to(bundle_dir).as_posix()
        if member.is_file() and rel not in (MANIFEST, SIGNATURES) and rel.split("/")[0] not in UNCHECKED_DIRS:
            files[rel] = sha256_file(member)
    doc = {**doc, "schema_version": SCHEMA_VERSION, "files": files}
    (bundle_dir / MANIFEST).write_text(json.dumps(doc, indent=2) + "\n")


def pack_bundle(bundle_dir: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w") as tar:
        tar.add(bundle_dir, arcname=Path(bundle_dir).name)
    return Path(archive)
