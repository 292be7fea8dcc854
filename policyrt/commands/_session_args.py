"""Command-line flags generated from the controller's settings schema (controllers/settings.py), and
the one session argument group: --backend, --threads, --target-return, --trust.

Each flag's name, help, default and check come from its setting, so `policyrt run --rate -5` is
refused with the same "expected a number > 0" that `rate_hz = -5` gets in the daemon's file. A
flag left out is None (False for a switch) on the namespace, and the setting keeps its default:
`values_from_args` returns only what was given. Commands: run, eval, bench, verify, compare and
demo take the session group; run also the real-time flags (commands/_realtime_args.py). --trust
is checked where the session loads (SessionSettings.load: run, compare, serve), first thing in
verify, and by `untrusted` in the commands whose sessions load in child processes.
"""

from __future__ import annotations

import argparse

from policyrt.controllers.checks import Invalid
from policyrt.controllers.settings import DEFAULTS, SETTINGS, SessionSettings, Setting, assemble

SESSION = ("session.backend", "session.threads", "session.target_return", "session.trust")


def dest(setting: Setting) -> str:
    return setting.flag.lstrip("-").replace("-", "_")


def _flag_type(setting: Setting):
    def convert(text: str):
        try:
            return setting.parse(setting.text(text), None)
        except Invalid as bad:
            raise argparse.ArgumentTypeError(f"expected {bad.allowed}, got {text!r}") from None

    return convert


def _help(setting: Setting, default) -> str:
    options = dict(setting.argparse)
    if options.get("action") == "store_true" or options.get("required") or not setting.flag.startswith("-"):
        return setting.help
    return f"{setting.help} (default: {setting.default_text or default})"


def add_flag(container, name: str, help_suffix: str = "") -> None:
    """Add the flag of setting `name` ("loop.fallback") to a parser or an argument group."""
    setting = SETTINGS[name]
    options = dict(setting.argparse)
    if setting.flag.startswith("-"):
        options.setdefault("default", None)
        options["metavar"] = setting.metavar
    if options.get("action") not in ("store_true", "append") and setting.check_flag:
        options["type"] = _flag_type(setting)
    if options.get("action") == "store_true":
        options.pop("metavar", None)
    container.add_argument(setting.flag, help=_help(setting, DEFAULTS[name]) + help_suffix, **options)


def values_from_args(args: argparse.Namespace, names) -> dict:
    """{setting name: checked value} of the flags among `names` that were given. A list flag
    (--connect) is checked as a whole here (raises ValueError naming the flag); one that is not
    checked on the command line (check_flag=False) passes as given."""
    values = {}
    for name in names:
        setting = SETTINGS[name]
        value = getattr(args, dest(setting), None)
        if value is None or value is False:
            continue
        if isinstance(value, list):
            try:
                value = setting.parse(value, None)
            except Invalid as bad:
                raise ValueError(f"{setting.flag} {value!r}: expected {bad.allowed}") from None
        values[name] = value
    return values


def add_session_arguments(parser: argparse.ArgumentParser, *, target_return: bool = True,
                          applies_to: str = "") -> None:
    """The session group. target_return=False where a commanded return has no meaning (verify
    replays the returns recorded in parity.json). applies_to: what the session is, when it is not
    obviously the command's one (bench: the closed loop's controller)."""
    title = "session" + (f" ({applies_to})" if applies_to else "")
    group = parser.add_argument_group(title, "how the bundle's session is loaded")
    for name in SESSION:
        if target_return or name != "session.target_return":
            add_flag(group, name)


def session_from_args(args: argparse.Namespace) -> SessionSettings:
    """The SessionSettings of the group's flags (what is not there keeps its default)."""
    given = values_from_args(args, [n for n in SESSION if hasattr(args, dest(SETTINGS[n]))])
    return assemble({k.removeprefix("session."): v for k, v in given.items()}, SessionSettings)


def session_flags_given(args: argparse.Namespace) -> list[str]:
    """The session group's flags that were given (for a command that takes them only sometimes),
    --trust aside: the signature check holds for every use of the bundle."""
    return [SETTINGS[n].flag for n in SESSION
            if n != "session.trust" and getattr(args, dest(SETTINGS[n]), None) is not None]


def untrusted(session: SessionSettings, bundles) -> str | None:
    """The --trust check of the commands whose sessions load in child processes (eval, bench
    --loop, demo), made here once before any process starts: the refusal's one line for the first
    bundle no key in the trust directory signed, or None (also when no --trust was given)."""
    if session.trust is None:
        return None
    from policyrt.bundle import BundleError, open_bundle
    from policyrt.signing import check_trusted

    for path in dict.fromkeys(bundles):
        try:
            with open_bundle(path) as bundle:  # a .tar's unpacked copy is removed right away
                check_trusted(bundle, session.trust, where=path)
        except BundleError as refused:
            return str(refused)
    return None
