"""`policyrt info`: print a bundle's manifest readably."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("info", help="show a bundle's manifest",
                              description="Print what a bundle is: policy, dims, bounds, state, parity, provenance.")
    p.add_argument("bundle", help="bundle directory or .tar")
    p.add_argument("--json", action="store_true", help="print the raw manifest")
    p.set_defaults(handler=handle)
    return p


def handle(args) -> int:
    from policyrt.bundle import BundleError, open_bundle

    try:
        bundle = open_bundle(args.bundle)
    except BundleError as err:
        print(f"refused: {err}", file=sys.stderr)
        return 1
    with bundle:
        doc = bundle.manifest.raw
        if args.json:
            print(json.dumps(doc, indent=2))
            return 0
        print(describe(doc, bundle.digest))
    return 0


def describe(doc: dict, digest: str) -> str:
    """The manifest readably; `digest` is the bundle's (bundle.sha256, what a signature covers)."""
    m = doc
    rate = m.get("control_rate_hz")
    lines = [
        f"bundle      {m['name']}  (schema {m['schema_version']})",
        f"digest      sha256 {digest}",
        f"policy      {m['policy']['kind']}  env {m.get('env_id') or '-'}  rate {f'{rate:g} Hz' if rate else '-'}",
        f"obs         {m['obs_dim']} dims" + (f"  {', '.join(m['obs_names'])}" if m.get("obs_names") else ""),
        f"action      {m['act_dim']} dims  low {m['action_low']}  high {m['action_high']}",
        f"target ret  {m['target_return']:g}  (return scale {m.get('return_scale', '-')})",
        f"graph       {m['graph']['nodes']} nodes, opset {m['graph']['opset']}",
        "state:",
    ]
    total = 0
    for s in m["state"]:
        count = 1
        for d in s["shape"]:
            count *= d
        total += count
        lines.append(f"  {s['name']:<14} [B, {', '.join(map(str, s['shape']))}] {s['dtype']} init {s['init']:g}")
    lines.append(f"  ({total} floats per slot)")
    for backend, res in (m.get("parity") or {}).items():
        lines.append(f"parity      {backend}: action max abs {res['action_max_abs']:.2e}, state max abs {res['state_max_abs']:.2e}")
    prov = m.get("provenance", {})
    lines.append(f"checkpoint  sha256 {prov.get('checkpoint_sha256', '-')[:16]}...")
    for cmd in prov.get("commands", []):
        lines.append(f"made by     {cmd}")
    versions = prov.get("versions", {})
    lines.append("versions    " + ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    return "\n".join(lines)
