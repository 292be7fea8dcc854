"""Checkpoint -> bundle: step ONNX, graph checks, parity against ONNX Runtime, manifest with checksums.

Nothing is written at the destination unless every check passes: the bundle is assembled in a
temporary directory beside it and renamed into place at the end.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np

from policyrt import contract
from policyrt.atomic_dir import replace_dir_atomically
from policyrt.bundle import open_bundle, sha256_file, write_manifest

from .graph_checks import check_step_graph
from .parity import export_bound, fp32_noise, parity_document, parity_refusal, record_reference
from .step_onnx import export_step_graph, state_table


class ExportError(RuntimeError):
    pass


def library_versions() -> dict:
    versions = {"python": platform.python_version()}
    for module in ("policyrt", "torch", "onnx", "onnxruntime", "xlstm", "numpy"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is recorded as absent
            versions[module] = None
    return versions


def export_bundle(checkpoint: Path, out: Path, name: str | None = None, command: str | None = None,
                  tolerance: float | None = None, progress=print) -> Path:
    """Export a policyrt checkpoint directory (config.json + model.safetensors)."""
    from policyrt.policies.checkpoint import load_checkpoint

    policy, doc = load_checkpoint(checkpoint)
    return export_policy(policy, doc, Path(checkpoint), out, name, command, tolerance, progress)


def export_policy(policy, doc: dict, source: Path, out: Path, name: str | None = None, command: str | None = None,
                  tolerance: float | None = None, progress=print) -> Path:
    """Export an in-memory policy; `doc` carries its provenance (commands, dataset, import assumptions)."""
    import onnx

    from policyrt.policies.checkpoint import save_checkpoint
    from policyrt.policies.kinds import make_step
    from policyrt.runtime import make_backend
    from policyrt.runtime.verify import compare, replay, state_scale

    out = Path(out)
    config = policy.config
    step = make_step(policy)
    name = name or out.name.removesuffix(".tar").removesuffix(".policy")
    with replace_dir_atomically(out, prefix=name) as work:
        progress(f"exporting step graph of {source} ...")
        onnx_bytes = export_step_graph(step, config.obs_dim, config.act_dim, work / "policy.onnx")
        graph = check_step_graph(onnx.load_from_string(onnx_bytes), step.specs)
        if not graph.ok:
            raise ExportError("step graph breaks the contract:\n  " + "\n  ".join(graph.problems))
        extra = {k: v for k, v in doc.items() if k not in ("kind", "config")}
        save_checkpoint(policy, work / "reference", extra=extra)

        progress("recording the reference rollout and replaying it on ONNX Runtime ...")
        obs_mean, obs_std = (np.array(v) for v in config.obs_normalization)
        inputs, ref_actions, ref_states = record_reference(step, obs_mean, obs_std, config.act_dim, config.target_return)

        dataset = doc.get("dataset", {})
        control_dt = dataset.get("control_dt")
        manifest = {
            "name": name,
            "policy": {"kind": config.kind, "config": config.to_dict()},
            "obs_dim": config.obs_dim,
            "act_dim": config.act_dim,
            "obs_names": None,
            "action_names": None,
            "action_low": list(config.action_low),
            "action_high": list(config.action_high),
            # The training data's observation range (the controller's observation guard); absent
            # where the checkpoint does not know it (an imported policy, an older checkpoint).
            **({"obs_low": list(config.obs_low), "obs_high": list(config.obs_high)} if config.obs_low else {}),
            "inputs": list(contract.INPUTS),
            "state": state_table(step),
            "target_return": config.target_return,
            "return_scale": config.return_scale,
            "control_rate_hz": round(1.0 / control_dt, 6) if control_dt else None,
            "env_id": dataset.get("env_id"),
            # What an importer assumed (scales, bounds, context) for a policy trained elsewhere.
            "import": doc.get("import"),
            "graph": {"opset": 17, "nodes": graph.node_count, "ops": graph.op_histogram},
            "provenance": {
                "source": str(source),
                "checkpoint_sha256": sha256_file(work / "reference" / "model.safetensors"),
                "commands": [*doc.get("commands", []), *([command] if command else [])],
                "versions": library_versions(),
                "created_unix": int(time.time()),
            },
        }
        # Write a provisional manifest so the runtime can open the bundle for the parity replay.
        (work / "parity.json").write_text("{}")
        write_manifest(work, manifest)
        backend = make_backend(open_bundle(work), "onnxruntime", inputs["obs"].shape[1])
        state_errors = {s.name: 0.0 for s in step.specs}
        state_scaled = {s.name: 0.0 for s in step.specs}  # judged as verify judges states: state_scale()

        def check_state(t, be):
            current = be.state()
            for key in state_errors:
                want = ref_states[t][key]
                err = float(np.abs(current[key] - want).max())
                state_errors[key] = max(state_errors[key], err)
                state_scaled[key] = max(state_scaled[key], err / state_scale(want))

        actions = replay(backend, inputs, on_step=check_state)
        backend.close()
        noise = fp32_noise(step, inputs, ref_actions, ref_states)
        bound = export_bound(tolerance, noise)  # the gate's rule: export/parity.py
        action_err = compare("action", actions, ref_actions, bound)
        worst_state = max(state_scaled, key=state_scaled.get)
        results = {
            "onnxruntime": {
                "action_max_abs": action_err.max_abs,
                "action_max_rel": action_err.max_rel,
                "state_max_abs": max(state_errors.values()),
                "state_max_abs_by_tensor": state_errors,
                "state_max_scaled": state_scaled[worst_state],
                "state_max_scaled_by_tensor": state_scaled,
                "checked": "actions (max abs) and every state tensor (max abs / max(1, max |reference|)) at every step",
                "torch_fp32_noise": noise,
                "bound": bound,
            }
        }
        progress(f"parity: action max abs {action_err.max_abs:.2e}, state max scaled {state_scaled[worst_state]:.2e} ({worst_state})")
        refusal = parity_refusal(action_err, state_scaled, tolerance, bound, noise)
        if refusal:
            raise ExportError(f"{refusal}; nothing was written to {out}")
        doc_out = parity_document(inputs, ref_actions, ref_states[-1], bound, results)
        (work / "parity.json").write_text(json.dumps(doc_out) + "\n")
        manifest["parity"] = results
        write_manifest(work, manifest)
    progress(f"wrote {out} ({sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB)")
    return out
