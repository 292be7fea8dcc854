"""The bundle: `NAME.policy/` with manifest.json, bundle.sha256, policy.onnx, parity.json (optionally a .tar).

A bundle is refused, with one line naming the file or the field, when its manifest is not the one
written with it (bundle.sha256, the digest), a field is invalid (policyrt/manifest.py), a listed file
is missing, changed or outside the bundle, or a file is there that the manifest does not list. See
docs/BUNDLE.md, "What open_bundle checks".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from .contract import StateTensor
from .manifest import SCHEMA_VERSION, read_fields

MANIFEST = "manifest.json"
# The manifest's digest (bundle_digest), written beside it: what makes a hand-edited manifest a refused one.
DIGEST_FILE = "bundle.sha256"
# Engines are built on the board after the bundle was made; they carry their own verify stamps.
UNCHECKED_DIRS = ("engines",)
# Signatures over the bundle digest (policyrt/signing.py): outside `files` and the digest, so that
# signing changes nothing that is signed.
SIGNATURES = "signatures.json"
# The files a bundle may hold without `files` listing them (besides the engines/ tree).
UNLISTED = (MANIFEST, DIGEST_FILE, SIGNATURES)
# Far above a real manifest (tens of kB, engine build logs included); read before anything else of a .tar.
MAX_MANIFEST_BYTES = 4 << 20
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


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
    # The training data's per-channel observation range (float32 [obs_dim]); None where unrecorded.
    obs_low: np.ndarray | None = None
    obs_high: np.ndarray | None = None
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, doc: dict, where: str = MANIFEST) -> Manifest:
        """Every field checked (policyrt/manifest.py); BundleError naming `where` and the field."""
        try:
            return cls(**read_fields(doc), raw=doc)
        except ValueError as err:
            raise BundleError(f"{where}: {err}") from None


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
    digest: str  # bundle_digest of the manifest, as bundle.sha256 records it
    # Removes the temporary directory a .tar was unpacked into (close(), or garbage collection / exit).
    _cleanup: weakref.finalize | None = field(default=None, repr=False, compare=False)

    @property
    def onnx_path(self) -> Path:
        return self.path / "policy.onnx"

    @property
    def parity_path(self) -> Path:
        return self.path / "parity.json"

    def parity(self) -> dict:
        return json.loads(self.parity_path.read_text())

    def close(self) -> None:
        """Remove what opening made (a .tar's unpacked copy); a no-op for a directory. Idempotent."""
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_bundle(path, verify_checksums: bool = True) -> Bundle:
    """Open `NAME.policy/` or `NAME.policy.tar`: the manifest's fields and digest, then every file."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle (expected a NAME.policy directory or .tar)")
    if path.is_dir():
        return _open_dir(path, verify_checksums, lambda rel: str(path / rel))
    if not tarfile.is_tarfile(path):
        raise BundleError(f"{path}: not a bundle directory and not a tar archive")
    tempdir, root = _unpack(path)
    try:
        bundle = _open_dir(root, verify_checksums, lambda rel: f"{path}: {rel}")
    except BaseException:
        shutil.rmtree(tempdir, ignore_errors=True)
        raise
    bundle._cleanup = weakref.finalize(bundle, shutil.rmtree, str(tempdir), True)
    return bundle


def _open_dir(root: Path, verify_checksums: bool, where) -> Bundle:
    """`where(rel)` names a file of the bundle in a message (the archive's name for a .tar)."""
    manifest_file = root / MANIFEST
    if not manifest_file.is_file():
        raise BundleError(f"{where(MANIFEST)}: missing (is {root} a bundle?)")
    with open(manifest_file, "rb") as handle:
        doc = _parse_manifest(handle.read(MAX_MANIFEST_BYTES + 1), where(MANIFEST))
    manifest = Manifest.from_dict(doc, where=where(MANIFEST))
    digest = _check_digest(root, doc, where)
    files = _listed_files(doc, where(MANIFEST))
    resolved_root = root.resolve()
    for rel, expected in files.items():
        member = root / rel
        if not member.resolve().is_relative_to(resolved_root):
            raise BundleError(f"{where(rel)}: resolves outside the bundle directory (a symlink?); a bundle holds its own files")
        if not member.is_file():
            raise BundleError(f"{where(rel)}: listed in the manifest but missing")
        if verify_checksums and sha256_file(member) != expected:
            raise BundleError(f"{where(rel)}: sha256 does not match the manifest (file changed or corrupted)")
    for rel in _present_files(root):
        if not _may_be_present(rel, files):
            raise BundleError(f"{where(rel)}: not listed in the manifest's files; a bundle holds only what its "
                              "manifest lists (remove the file, or export the bundle again)")
    return Bundle(path=root, manifest=manifest, digest=digest)


def _parse_manifest(data: bytes, where: str) -> dict:
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{where}: larger than {MAX_MANIFEST_BYTES >> 20} MiB; not a manifest")
    try:
        # NaN/Infinity parse here, so that the field holding one is named (manifest.py) rather than the file.
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{where}: not valid JSON ({err})") from None


def _check_digest(root: Path, doc: dict, where) -> str:
    """The manifest must be the one written with bundle.sha256 (write_manifest): returns the digest."""
    digest_file = root / DIGEST_FILE
    if not digest_file.is_file():
        raise BundleError(f"{where(DIGEST_FILE)}: missing: the manifest's digest is not recorded "
                          "(write manifests with policyrt.bundle.write_manifest, or export the bundle again)")
    with open(digest_file, "rb") as handle:
        recorded = handle.read(256).decode("ascii", "replace").strip()
    if not _SHA256_HEX.fullmatch(recorded):
        raise BundleError(f"{where(DIGEST_FILE)}: not a sha256 in hex")
    try:
        digest = bundle_digest(doc)
    except ValueError:  # allow_nan=False: a NaN or Infinity in a field the schema does not read
        raise BundleError(f"{where(MANIFEST)}: holds NaN or Infinity, which JSON does not allow") from None
    if digest != recorded:
        raise BundleError(f"{where(MANIFEST)}: changed since it was written (its digest does not "
                          f"match {DIGEST_FILE}); export the bundle again, or rewrite it with write_manifest")
    return digest


def _listed_files(doc: dict, where: str) -> dict[str, str]:
    """The manifest's `files`: plain relative paths inside the bundle, each with a sha256."""
    files = doc.get("files")
    if not isinstance(files, dict) or "policy.onnx" not in files:
        raise BundleError(f"{where}: 'files' must list every file with its sha256, policy.onnx included")
    for rel, expected in files.items():
        problem = _name_problem(rel)
        if problem:
            raise BundleError(f"{where}: files[{rel!r}] {problem}")
        if not isinstance(expected, str) or not _SHA256_HEX.fullmatch(expected):
            raise BundleError(f"{where}: files[{rel!r}] is {expected!r}: not a sha256 in hex")
    return files


def _name_problem(rel: str) -> str | None:
    """Why `rel` cannot name a listed file of a bundle, or None."""
    if not isinstance(rel, str) or not rel:
        return "is not a file name"
    pure = PurePosixPath(rel)
    if pure.is_absolute() or "\\" in rel:
        return "is an absolute path: a bundle lists only files inside it, relative to its directory"
    if ".." in pure.parts:
        return "leaves the bundle directory ('..'): a bundle lists only files inside it"
    if pure.as_posix() != rel:
        return f"is not a plain relative path (write {pure.as_posix()!r})"
    if rel in UNLISTED or pure.parts[0] in UNCHECKED_DIRS:
        return "is one of the files a bundle never lists (manifest.json, bundle.sha256, signatures.json, engines/)"
    return None


def _present_files(root: Path):
    """Every entry under `root` that is not a directory (symlinks included, never followed), relative, posix."""
    for top, dirs, names in os.walk(root):
        base = Path(top)
        for name in [*names, *(d for d in dirs if (base / d).is_symlink())]:
            yield (base / name).relative_to(root).as_posix()


def _may_be_present(rel: str, files: dict) -> bool:
    return rel in files or rel in UNLISTED or PurePosixPath(rel).parts[0] in UNCHECKED_DIRS


def _unpack(archive: Path) -> tuple[Path, Path]:
    """Extract a .tar bundle into a new temporary directory: (that directory, the bundle's root in it).

    The manifest member is read first, in memory and size-capped, and every member is checked
    against its `files` before anything is written: an unlisted member, or one that is not a regular
    file, is refused without extracting a byte. Extraction uses tarfile's "data" filter."""
    if not hasattr(tarfile, "data_filter"):
        raise BundleError(f"{archive}: opening a .tar bundle needs tarfile's data filter (Python 3.10.12 or later)")
    try:
        with tarfile.open(archive) as tar:
            prefix, members = _checked_members(tar, archive)
            tempdir = Path(tempfile.mkdtemp(prefix="policyrt-bundle-"))
            try:
                tar.extractall(tempdir, members=members, filter="data")  # novermin - checked above
            except BaseException:
                shutil.rmtree(tempdir, ignore_errors=True)
                raise
    except (tarfile.TarError, OSError, EOFError) as err:  # truncated, corrupt, or refused by the filter
        raise BundleError(f"{archive}: cannot unpack: {err}") from None
    return tempdir, tempdir.joinpath(*prefix)


def _checked_members(tar: tarfile.TarFile, archive: Path) -> tuple[tuple[str, ...], list[tarfile.TarInfo]]:
    """The bundle root inside the archive (one directory level or none) and the members to extract."""
    pending, to_extract, files, prefix = [], [], None, ()
    for member in tar:
        parts = PurePosixPath(member.name).parts
        if PurePosixPath(member.name).is_absolute() or ".." in parts:
            raise BundleError(f"{archive}: unsafe member {member.name!r} (absolute, or leaves the archive with '..')")
        if files is None and parts[-1:] == (MANIFEST,) and len(parts) <= 2:
            prefix = parts[:-1]
            files = _listed_files(_read_manifest_member(tar, member, archive), f"{archive}: {MANIFEST}")
            pending.append(member)
            for earlier in pending:  # the members before the manifest, checked now
                _admit(earlier, prefix, files, archive, to_extract)
            continue
        if files is None:
            pending.append(member)
        else:
            _admit(member, prefix, files, archive, to_extract)
    if files is None:
        raise BundleError(f"{archive}: no {MANIFEST} at the top of the archive (or in its one top directory)")
    return prefix, to_extract


def _read_manifest_member(tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path) -> dict:
    if not member.isfile():
        raise BundleError(f"{archive}: {MANIFEST} is not a regular file")
    if member.size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{archive}: {MANIFEST} is {member.size} bytes, larger than {MAX_MANIFEST_BYTES >> 20} MiB")
    doc = _parse_manifest(tar.extractfile(member).read(), f"{archive}: {MANIFEST}")
    if not isinstance(doc, dict):
        raise BundleError(f"{archive}: {MANIFEST}: must be a JSON object")
    return doc


def _admit(member: tarfile.TarInfo, prefix: tuple, files: dict, archive: Path, to_extract: list) -> None:
    """Add `member` to what is extracted, skip it (a directory) or refuse the archive."""
    parts = PurePosixPath(member.name).parts
    if parts[:len(prefix)] != prefix:
        raise BundleError(f"{archive}: member {member.name!r} is outside the bundle's directory {'/'.join(prefix)!r}")
    rel = "/".join(parts[len(prefix):])
    if member.isdir():
        return  # directories are made as the files in them are extracted
    if not rel or not _may_be_present(rel, files):
        raise BundleError(f"{archive}: member {member.name!r} is not listed in the manifest's files "
                          "(refused before extracting anything)")
    if not member.isfile():
        raise BundleError(f"{archive}: member {member.name!r} is not a regular file (links and devices are refused)")
    to_extract.append(member)


def write_manifest(bundle_dir: Path, doc: dict) -> str:
    """Fill in `files` (sha256 of everything but the unlisted files and engines/), write manifest.json and
    its digest, bundle.sha256; return the digest."""
    bundle_dir = Path(bundle_dir)
    files = {}
    for member in sorted(bundle_dir.rglob("*")):
        rel = member.relative_to(bundle_dir).as_posix()
        if member.is_file() and rel not in UNLISTED and rel.split("/")[0] not in UNCHECKED_DIRS:
            files[rel] = sha256_file(member)
    doc = {**doc, "schema_version": SCHEMA_VERSION, "files": files}
    digest = bundle_digest(doc)
    (bundle_dir / MANIFEST).write_text(json.dumps(doc, indent=2) + "\n")
    (bundle_dir / DIGEST_FILE).write_text(digest + "\n")
    return digest


def pack_bundle(bundle_dir: Path, archive: Path) -> Path:
    """Pack a bundle directory into one .tar, manifest.json and bundle.sha256 first (read first on open)."""
    bundle_dir = Path(bundle_dir)
    top = bundle_dir.name
    first = [name for name in (MANIFEST, DIGEST_FILE) if (bundle_dir / name).exists()]
    with tarfile.open(archive, "w") as tar:
        tar.add(bundle_dir, arcname=top, recursive=False)
        for child in [*(bundle_dir / n for n in first), *sorted(c for c in bundle_dir.iterdir() if c.name not in first)]:
            tar.add(child, arcname=f"{top}/{child.name}")
    return Path(archive)
