"""The tampered archives of tests/test_bundle_tamper.py: unlisted, escaping, linked and special members,
an oversized manifest, a truncated archive, and a tampered bundle packed whole. Built like
tests/tamper_cases.py's cases, from a copy of a shipped bundle in a fresh work directory."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable
from pathlib import Path

from tamper_cases import CASES, NAN, Case, copy_base, manifest_doc, rehash

from policyrt.bundle import pack_bundle


def tar_case(label: str, build: Callable[[Path, Path], Path], *names: str) -> Case:
    """build(work, bundle dir) -> archive; the refusal must name the archive and `names`."""

    def make(work: Path) -> Path:
        return build(work, copy_base(work))

    return Case("tar", label, make, ("t.policy.tar", *names))


def tar_with(extra: Callable[[tarfile.TarFile], None], before: bool = False, mode: str = "w"):
    """A packed bundle with members added by `extra`, before or after the bundle's own."""

    def build(work: Path, bundle: Path) -> Path:
        archive = work / ("t.policy.tar" + (".gz" if mode == "w:gz" else ""))
        with tarfile.open(archive, mode) as tar:
            if before:
                extra(tar)
            tar.add(bundle, arcname="t.policy")
            if not before:
                extra(tar)
        return archive

    return build


def add_bytes(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, link: str = ""):
    def extra(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, link
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    return extra


def truncated_archive(work: Path, bundle: Path) -> Path:
    archive = pack_bundle(bundle, work / "t.policy.tar")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    return archive


def tampered_inside(work: Path, bundle: Path) -> Path:
    doc = manifest_doc(bundle)
    doc["action_low"] = [NAN]
    rehash(bundle, doc)
    return pack_bundle(bundle, work / "t.policy.tar")


def no_manifest(work: Path, bundle: Path) -> Path:
    (bundle / "manifest.json").unlink()
    return pack_bundle(bundle, work / "t.policy.tar")


TAR = [
    tar_case("unlisted member after", tar_with(add_bytes("t.policy/extra.bin")), "t.policy/extra.bin", "not listed"),
    tar_case("unlisted member before", tar_with(add_bytes("t.policy/aaa.bin"), before=True), "t.policy/aaa.bin"),
    tar_case("unlisted member gz", tar_with(add_bytes("t.policy/zzz.bin", b"\0" * (1 << 20)), mode="w:gz"),
             "t.policy/zzz.bin"),
    tar_case("member outside the root", tar_with(add_bytes("other/x.bin")), "other/x.bin"),
    tar_case("member with ..", tar_with(add_bytes("t.policy/../../evil")), "t.policy/../../evil"),
    tar_case("absolute member", tar_with(add_bytes("/tmp/evil")), "/tmp/evil"),
    tar_case("symlink member", tar_with(add_bytes("t.policy/link", kind=tarfile.SYMTYPE, link="/etc/hostname")),
             "t.policy/link"),
    tar_case("listed name as a symlink", tar_with(add_bytes("t.policy/parity.json", kind=tarfile.SYMTYPE,
                                                            link="/etc/hostname")), "t.policy/parity.json"),
    tar_case("hardlink member", tar_with(add_bytes("t.policy/signatures.json", kind=tarfile.LNKTYPE,
                                                   link="t.policy/policy.onnx")), "t.policy/signatures.json"),
    tar_case("fifo member", tar_with(add_bytes("t.policy/engines/fifo", kind=tarfile.FIFOTYPE)), "t.policy/engines/fifo"),
    tar_case("manifest too big", tar_with(add_bytes("t.policy/manifest.json", b" " * (5 << 20)), before=True),
             "manifest.json"),
    tar_case("no manifest", no_manifest, "manifest.json"),
    tar_case("truncated archive", truncated_archive),
    tar_case("NaN bound inside", tampered_inside, "manifest.json", "action_low[0]"),
]

EVERY_CASE = [*CASES, *TAR]
