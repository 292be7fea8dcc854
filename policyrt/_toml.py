"""TOML reading for board-side code that must also run on Python 3.10 (JetPack 6).

The standard library has `tomllib` from 3.11 on; on 3.10 the `tomli` package (a dependency there,
see pyproject.toml) has the same API. Everything board-side reads TOML through this module, so the
version question is answered in one place (ruff bans `tomllib` everywhere else).
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):
    # The one sanctioned import of tomllib, guarded by the version check (ruff TID251, vermin).
    import tomllib as _toml  # noqa: TID251  # novermin
else:  # pragma: no cover - exercised on 3.10 boards
    import tomli as _toml

TOMLDecodeError = _toml.TOMLDecodeError


def loads(text: str) -> dict:
    """Parse TOML text into plain dicts, lists, strings and numbers."""
    return _toml.loads(text)


def load_path(path) -> dict:
    """Parse the TOML file at `path` (opened in binary mode, as the parser requires)."""
    with open(path, "rb") as f:
        return _toml.load(f)
