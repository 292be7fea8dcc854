"""CLI subcommands. Each module exposes `add_parser(subparsers)` and a `handle(args) -> int`
that policyrt.cli registers; `python -m policyrt.cli ...` is the one entry point."""
