"""`policyrt train xlstm`: behaviour cloning of an xLSTM policy on a collected dataset."""

from __future__ import annotations

import argparse
import dataclasses
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


def add_parser(subparsers) -> argparse.ArgumentParser:
    from policyrt.policies.train_xlstm import TrainXLSTMArgs

    p = subparsers.add_parser("train", help="train a policy on a dataset", description="Train a policy.")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    x = kinds.add_parser(
        "xlstm",
        help="xLSTM policy, behaviour cloning on expert sequences",
        description="Behaviour cloning of the xLSTM policy (return-conditioned tokens) with a progress bar. "
        "Ctrl-C saves the weights reached so far; the checkpoint is also written every --save-every steps.",
        epilog="example:\n  policyrt train xlstm --data data/pendulum --out checkpoints/pendulum-xlstm --steps 1500",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    docs = {k: v.replace("%", "%%") for k, v in _arg_docs(TrainXLSTMArgs).items()}  # argparse formats help with %
    hints = typing.get_type_hints(TrainXLSTMArgs)
    for f in dataclasses.fields(TrainXLSTMArgs):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        if f.default is dataclasses.MISSING:
            x.add_argument(flag, dest=f.name, type=kind, required=True, help=docs.get(f.name))
        else:
            x.add_argument(flag, dest=f.name, type=kind, default=f.default, help=f"{docs.get(f.name, '')} (default {f.default})")
    x.set_defaults(handler=handle)
    return p


def handle(args) -> int:
    from policyrt.policies.train_xlstm import TrainXLSTMArgs, train

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainXLSTMArgs)}
    values["data"], values["out"] = Path(values["data"]), Path(values["out"])
    train(TrainXLSTMArgs(**values), command=args.command_line)
    return 0
