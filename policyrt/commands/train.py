"""`policyrt train KIND`: return-conditioned training of a policy on a collected dataset; one subcommand
per kind with a trainer in policies/kinds.py, one flag per field of its `TrainArgs`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path


def _arg_docs(cls) -> dict[str, str]:
    """Field docstrings (the string literal under each field) become --help text; a subclass's own
    docstring of a field it redeclares replaces its base class's."""
    import ast
    import inspect

    docs = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        last = None
        for node in ast.parse(inspect.getsource(klass)).body[0].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                last = node.target.id
            elif isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant) and last:
                docs[last] = str(node.value.value)
                last = None
    return docs


def _plain(hint):
    """`float | None` -> float: an optional field is simply left out on the command line."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint


def add_parser(subparsers) -> argparse.ArgumentParser:
    from policyrt.policies.kinds import train_args_classes

    p = subparsers.add_parser("train", help="train a policy on a dataset", description="Train a policy.")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, args_class in train_args_classes().items():
        x = kinds.add_parser(
            kind,
            help=args_class.help,
            description=args_class.__doc__ + " Progress bar with the loss; Ctrl-C saves the weights reached so far, "
            "and the checkpoint is also written every --save-every steps.",
            epilog=f"example:\n  policyrt train {kind} --data data/pendulum --out checkpoints/pendulum-{kind}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        docs = {k: v.replace("%", "%%") for k, v in _arg_docs(args_class).items()}  # argparse formats help with %
        hints = {name: _plain(hint) for name, hint in typing.get_type_hints(args_class).items()}
        for f in dataclasses.fields(args_class):
            flag = "--" + f.name.replace("_", "-")
            if f.default is dataclasses.MISSING:
                x.add_argument(flag, dest=f.name, type=hints[f.name], required=True, help=docs.get(f.name))
            else:  # a field with fixed values lists them in its metadata: argparse shows them and refuses others
                x.add_argument(flag, dest=f.name, type=hints[f.name], default=f.default,
                               choices=f.metadata.get("choices"), help=f"{docs.get(f.name, '')} (default {f.default})")
        x.set_defaults(handler=handle, args_class=args_class)
    return p


def handle(args) -> int:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args.args_class)}
    values["data"], values["out"] = Path(values["data"]), Path(values["out"])
    try:
        args.args_class(**values).run(command=args.command_line)
    except (FileNotFoundError, ValueError) as exc:  # a missing or malformed dataset: the message names it
        print(f"policyrt train {args.kind}: {exc}", file=sys.stderr)
        return 2
    return 0
