"""Importers: policies trained elsewhere -> (policyrt policy, provenance document) ready to export.

Each importer takes the source path and an options dict (the CLI's --context, --return-scale,
--target-return, --obs-mean/--obs-std arrays, --action-low/--action-high; None where not given),
refuses with a message naming the field whatever it cannot infer, and records what it assumed under
`doc["import"]`, which the bundle manifest keeps. The names are kinds.IMPORTERS.
"""

from __future__ import annotations

from pathlib import Path

from .kinds import IMPORTERS, resolve


class ImportRefused(ValueError):
    """The source cannot be imported as it is; the message names the field and what to supply."""


def run_importer(name: str, source: Path, options: dict):
    if name not in IMPORTERS:
        raise ImportRefused(f"unknown --from {name!r}; available: {', '.join(IMPORTERS)}")
    return resolve(IMPORTERS[name])(Path(source), options)
