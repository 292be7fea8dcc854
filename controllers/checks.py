"""Value checkers of the controller's settings (controllers/settings.py), shared by its front-ends.

A checker takes a TOML-native value (str, int, float, bool, list) and returns the setting's value
or raises Invalid with what is allowed, which both front-ends put into their one-line message
("rate_hz = -5 is not allowed; expected a number > 0", "argument --rate: expected a number > 0,
got '-5'"). Command-line text becomes a TOML-native value first (`literal` and friends), so the
same checker sees the same value whichever front-end it came from.

Board-side module: standard library only, Python 3.10.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


class Invalid(Exception):
    def __init__(self, allowed: str):
        super().__init__(allowed)
        self.allowed = allowed


# --- command-line text -> TOML-native values ---


def _scalar(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def literal(text: str):
    """"5" -> 5, "0.5" -> 0.5, "0.1,0.2" -> [0.1, 0.2], "true"/"false" -> bool, other text stays."""
    if text in ("true", "false"):
        return text == "true"
    items = [_scalar(t.strip()) for t in text.split(",")]
    return items[0] if len(items) == 1 else items


def number_list(text: str) -> list:
    """"1" -> [1], "2,3" -> [2, 3]: a list even of one."""
    value = literal(text)
    return value if isinstance(value, list) else [value]


def word_or_list(text: str):
    """A word stays a word ("hold"); numbers become a list, even one ("0.5" -> [0.5])."""
    value = literal(text)
    return value if isinstance(value, (str, list)) else [value]


# --- checkers ---


def number(value) -> float:
    # bool is an int in Python; `true` is never a number in a config.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Invalid("a finite number")
    return float(value)


def positive(value) -> float:
    try:
        x = number(value)
    except Invalid:
        x = -1.0
    if x <= 0:
        raise Invalid("a number > 0")
    return x


def non_negative(value) -> float:
    try:
        x = number(value)
    except Invalid:
        x = -1.0
    if x < 0:
        raise Invalid("a number >= 0 (0: off)")
    return x


def int_range(lo: int, hi: int, allowed: str | None = None) -> Callable[[Any], int]:
    def check(value) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise Invalid(allowed or f"an integer in {lo}..{hi}")
        return value

    return check


def boolean(value) -> bool:
    if not isinstance(value, bool):
        raise Invalid("true or false")
    return value


def text(value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid("a non-empty string")
    return value


_SCHEMES = ("tcp://", "ipc://", "inproc://")


def endpoint(value) -> str:
    if not isinstance(value, str) or not value.startswith(_SCHEMES):
        raise Invalid("a ZeroMQ endpoint string: tcp://HOST:PORT or ipc://PATH")
    return value


def optional_endpoint(value) -> str | None:
    return None if value == "" else endpoint(value)


def robots(value) -> tuple[str, ...]:
    allowed = 'a non-empty list of endpoints, e.g. ["tcp://127.0.0.1:5555"]'
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise Invalid(allowed)
    try:
        endpoints = tuple(endpoint(v) for v in value)
    except Invalid as bad:
        raise Invalid(allowed) from bad
    if len(set(endpoints)) != len(endpoints):
        raise Invalid("endpoints that are all different (one controller per robot endpoint)")
    return endpoints


def fallback(value) -> str | tuple[float, ...]:
    allowed = '"hold", "zero", or a list of numbers (the safe action, one per action dimension)'
    if value in ("hold", "zero"):
        return value
    if isinstance(value, list) and value:
        try:
            return tuple(number(v) for v in value)
        except Invalid as bad:
            raise Invalid(allowed) from bad
    raise Invalid(allowed)


def max_delta(value) -> float | tuple[float, ...]:
    allowed = "a number > 0, or a list of numbers > 0 (one per action dimension)"
    try:
        if isinstance(value, list) and value:
            return tuple(positive(v) for v in value)
        return positive(value)
    except Invalid as bad:
        raise Invalid(allowed) from bad


def cpus(value) -> tuple[int, ...]:
    allowed = "a list of CPU numbers (integers >= 0): [2, 3] in a file, 2,3 as a flag"
    if not isinstance(value, list):
        raise Invalid(allowed)
    try:
        return tuple(int_range(0, 4095)(v) for v in value)
    except Invalid as bad:
        raise Invalid(allowed) from bad


def port_or_off(value) -> int | None:
    if value == 0:
        return None
    return int_range(1, 65535, "a TCP port in 1..65535, or 0 for off")(value)


def backend(value) -> str:
    from policyrt.runtime import backend_names

    allowed = backend_names(aliases=True)
    if value not in allowed:
        raise Invalid("one of " + ", ".join(allowed))
    return value


def dataset_format(value) -> str:
    from policyrt.episodes import FORMATS

    if value not in FORMATS:
        raise Invalid("one of " + ", ".join(FORMATS))
    return value


class PathCheck:
    """A path; relative ones are taken from `base` (the config file's directory; None: as given).
    '' means off where the setting is optional."""

    def __init__(self, optional: bool):
        self.optional = optional

    def __call__(self, value, base: Path | None) -> Path | None:
        if self.optional and value == "":
            return None
        if not isinstance(value, str) or not value:
            raise Invalid("a path string" + (', or "" for off' if self.optional else ""))
        path = Path(value).expanduser()
        return path if base is None or path.is_absolute() else base / path
