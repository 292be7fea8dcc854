"""CLI subcommands. Each module exposes `add_parser(subparsers)` and a `handle(args) -> int`
that policyrt.cli registers; `main(argv)` runs one on its own (`python -m policyrt.commands.run`)."""
