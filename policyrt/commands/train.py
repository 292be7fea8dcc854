"""`policyrt train {xlstm,dt}`: return-conditioned training of a policy on a collected dataset."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path


def _arg_docs(cls) -> dict[str, str]:
    """Field docstrings (the string literal under each field) become --help text."""
    import ast
    import inspect

    docs, last = {}, None
    for node in ast.parse(inspect.getsource(cls)).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            last = node.target.id
        elif isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant) and last:
            docs[last] = str(node.value.value)
            last = None
    return docs


# kind -> (module in policyrt.policies, args dataclass, help, description)
TRAINERS = {
    "xlstm": ("train_xlstm", "TrainXLSTMArgs", "xLSTM policy, return-conditioned, on episode windows",
              "Return-conditioned training of the xLSTM policy (return-to-go in every token)."),
    "dt": ("train_dt", "TrainDTArgs", "Decision Transformer, return-conditioned, on K-step windows",
           "Return-conditioned Decision Transformer training (left-padded K windows)."),
}


def _plain(hint):
    """`float | None` -> float: an optional field is simply left out on the command line."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint


# Fields with a fixed set of values (argparse lists them in --help and refuses others by name).
CHOICES = {"labels": ("auto", "applied", "behaviour", "expert")}


def _trainer(kind: str):
    import importlib

    module_name, args_name = TRAINERS[kind][:2]
    module = importlib.import_module(f"policyrt.policies.{module_name}")
    return module, getattr(module, args_name)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train a policy on a dataset", description="Train a policy.")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, (_, _, help_text, description) in TRAINERS.items():
        _, args_class = _trainer(kind)
        x = kinds.add_parser(
            kind,
            help=help_text,
            description=description + " Progress bar with the loss; Ctrl-C saves the weights reached so far, "
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
            else:
                x.add_argument(flag, dest=f.name, type=hints[f.name], default=f.default, choices=CHOICES.get(f.name),
                               help=f"{docs.get(f.name, '')} (default {f.default})")
        x.set_defaults(handler=handle)
    return p


def handle(args) -> int:
    module, args_class = _trainer(args.kind)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args_class)}
    values["data"], values["out"] = Path(values["data"]), Path(values["out"])
    try:
        module.train(args_class(**values), command=args.command_line)
    except (FileNotFoundError, ValueError) as exc:  # a missing or malformed dataset: the message names it
        print(f"policyrt train {args.kind}: {exc}", file=sys.stderr)
        return 2
    return 0
