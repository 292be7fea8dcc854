"""The daemon's TOML configuration file, read into the controller's settings (controllers/settings.py).

A daemon that misreads its configuration moves a robot the wrong way, so reading is strict: every
key is known, every value is checked, and an error names the file, the key, the value and what is
allowed. Nothing is guessed -- a typo such as `rate_hx` is an error, not a silently ignored line.
The keys, their defaults and their checks are the schema's (each setting's `toml` key);
deploy/controller.toml is the commented example; docs/DAEMON.md describes each key.

Relative paths (bundle, key and recorder directories) are resolved against the directory of the
config file, so a config and its bundle can be moved together.

Board-side module: standard library only, Python 3.10 (TOML through policyrt._toml).
"""

from __future__ import annotations

from pathlib import Path

from policyrt import _toml
from policyrt.controllers.checks import Invalid
from policyrt.controllers.settings import SETTINGS, ControllerSettings, MissingSetting, assemble


class ConfigError(ValueError):
    """The configuration file is missing, not TOML, or has an unknown key or a bad value."""


def _keys_by_section() -> dict[str, dict[str, str]]:
    """section ("" = the top level) -> {key in the file: dotted setting name}."""
    sections: dict[str, dict[str, str]] = {"": {}}
    for name, setting in SETTINGS.items():
        if setting.toml:
            section, _, key = setting.toml.rpartition(".")
            sections.setdefault(section, {})[key] = name
    return sections


_SECTIONS = _keys_by_section()
_TABLES = [s for s in _SECTIONS if s]


def load_config(path) -> ControllerSettings:
    """Read and check the config file at `path`; raises ConfigError with a message a user can act on."""
    path = Path(path)
    try:
        doc = _toml.load_path(path)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such config file (see deploy/controller.toml for an example)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except _toml.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(doc, path)


def parse_config(doc: dict, path) -> ControllerSettings:
    """Check an already parsed TOML document; `path` names it in messages and anchors relative paths."""
    path = Path(path)
    base = path.resolve().parent
    values = _section(doc, "", path, base)
    for section in _TABLES:
        raw = doc.get(section, {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: '{section}' must be a table ([{section}]), got {raw!r}")
        values.update(_section(raw, section, path, base))
    try:
        return assemble(values, origin=path)
    except MissingSetting as missing:
        raise ConfigError(f"{path}: missing required key '{SETTINGS[missing.name].toml}' at the top level") from None


def _section(raw: dict, section: str, path: Path, base: Path) -> dict:
    """{dotted setting name: checked value} of one table of the file."""
    keys = _SECTIONS[section]
    where = f"[{section}]" if section else "the top level"
    out = {}
    for key, value in raw.items():
        if not section and key in _TABLES:
            continue  # a table, read on its own
        if key not in keys:
            allowed = list(keys) + ([f"[{s}]" for s in _TABLES] if not section else [])
            raise ConfigError(f"{path}: unknown key '{key}' in {where}; allowed: {', '.join(allowed)}")
        name = keys[key]
        try:
            out[name] = SETTINGS[name].parse(value, base)
        except Invalid as bad:
            label = f"{section}.{key}" if section else key
            raise ConfigError(f"{path}: {label} = {value!r} is not allowed; expected {bad.allowed}") from None
    return out
