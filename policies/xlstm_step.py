"""The xLSTM policy in step form, written for export: one timestep in, explicit state in and out.

It reads the parameters of `XLSTMPolicy` (and so of the xlstm package's block stack) but re-states the
step math so that the traced graph is lean and exportable: no in-place updates of inputs (the package's
conv step does `copy_`), no data-dependent branches, log-sigmoid as -softplus(-x) so it stays finite in
fp16, headwise projections as batched MatMuls, gate projections folded, per-slot resets applied
through the forget gate instead of passes over the state.
State names and shapes (batch first) follow the step-graph contract in DESIGN.md.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .step_contract import StateSpec, initial_states
from .xlstm_policy import XLSTMPolicy

LAYER_NORM_EPS = 1e-5  # xlstm.components.ln.LayerNorm and MultiHeadLayerNorm default
MLSTM_EPS = 1e-6  # xlstm recurrent_step_stabilized_simple default


def headwise_to_dense(weight: torch.Tensor) -> torch.Tensor:
    """LinearHeadwiseExpand weight [H, out/H, in/H] -> block-diagonal [in, out] for x @ W."""
    heads, out_per, in_per = weight.shape
    dense = weight.new_zeros(heads * in_per, heads * out_per)
    for h in range(heads):
        dense[h * in_per : (h + 1) * in_per, h * out_per : (h + 1) * out_per] = weight[h].T
    return dense


class MLSTMBlockStep(nn.Module):
    """One mLSTM block (pre-norm + mLSTM layer + residual) for a single timestep."""

    def __init__(self, block, index: int):
        super().__init__()
        layer = block.xlstm
        cfg = layer.config
        self.index = index
        self.inner = cfg._inner_embedding_dim
        self.heads = cfg.num_heads
        self.head_dim = self.inner // self.heads
        self.kernel = cfg.conv1d_kernel_size
        if block.ffn is not None:
            raise ValueError("mLSTM blocks with a feed-forward part are not supported by the step export")
        self.norm_weight = nn.Parameter(block.xlstm_norm.weight_proxy.detach().clone(), requires_grad=False)
        self.proj_up = nn.Parameter(layer.proj_up.weight.detach().T.contiguous(), requires_grad=False)
        self.proj_up_bias = _maybe(layer.proj_up.bias)
        if self.kernel > 0:
            conv = layer.conv1d.conv
            self.conv_weight = nn.Parameter(conv.weight.detach()[:, 0, :].T.contiguous(), requires_grad=False)
            self.conv_bias = _maybe(conv.bias)
        for name in ("q_proj", "k_proj", "v_proj"):
            if getattr(layer, name).bias is not None:
                raise ValueError("biased q/k/v projections are not supported by the step export")
        # Headwise projections stay headwise: one batched MatMul over [P, bs, bs] blocks. A dense
        # block-diagonal matrix would stream ~1 MB of zeros per block and step, which dominates at B=1.
        wq, wk, wv = (getattr(layer, n).weight.detach() for n in ("q_proj", "k_proj", "v_proj"))
        self.proj_heads, self.blocksize = wq.shape[0], wq.shape[2]
        scale = 1.0 / math.sqrt(self.head_dim)  # the mLSTM's key scaling, folded into the weights
        self.qk_weight = nn.Parameter(torch.cat([wq.transpose(1, 2), scale * wk.transpose(1, 2)], 2), requires_grad=False)
        self.v_weight = nn.Parameter(wv.transpose(1, 2).contiguous(), requires_grad=False)
        # The gates read [q, k, v], which are linear in (conv_act, x_m): fold the projections into the
        # gate weights so the gates need one MatMul on [conv_act, x_m]. Forget gate stored negated:
        # log(sigmoid(f)) = -softplus(-f) then needs no Neg node and stays finite in fp16.
        cell = layer.mlstm_cell
        gate_w = torch.cat([cell.igate.weight.detach(), -cell.fgate.weight.detach()], 0).T  # [3*inner, 2NH]
        gate_q, gate_k, gate_v = gate_w.split(self.inner, 0)
        dense_q, dense_k, dense_v = (headwise_to_dense(w) for w in (wq, wk, wv))
        folded = torch.cat([dense_q @ gate_q + dense_k @ gate_k, dense_v @ gate_v], 0)  # [2*inner, 2NH]
        self.gate_weight = nn.Parameter(folded.contiguous(), requires_grad=False)
        self.gate_bias = nn.Parameter(torch.cat([cell.igate.bias.detach(), -cell.fgate.bias.detach()]), requires_grad=False)
        self.outnorm_weight = nn.Parameter(
            cell.outnorm.weight_proxy.detach().reshape(self.heads, 1, self.head_dim).clone(), requires_grad=False
        )
        self.skip = nn.Parameter(layer.learnable_skip.detach().clone(), requires_grad=False)
        self.proj_down = nn.Parameter(layer.proj_down.weight.detach().T.contiguous(), requires_grad=False)
        self.proj_down_bias = _maybe(layer.proj_down.bias)

    def state_specs(self) -> list[StateSpec]:
        p = f"block{self.index}"
        specs = [
            StateSpec(f"{p}.C", (self.heads, self.head_dim, self.head_dim)),
            StateSpec(f"{p}.n", (self.heads, self.head_dim)),
            StateSpec(f"{p}.m", (self.heads,)),
        ]
        if self.kernel > 0:
            specs.append(StateSpec(f"{p}.conv", (self.kernel, self.inner)))
        return specs

    def forward(self, x: torch.Tensor, states: list[torch.Tensor], keep: torch.Tensor):
        """`keep` [B] is 1.0 for slots that continue and 0.0 for slots that reset this tick."""
        nh, dh, bs = self.heads, self.head_dim, self.blocksize
        xn = F.layer_norm(x, (self.norm_weight.shape[0],), self.norm_weight, None, LAYER_NORM_EPS)
        up = xn @ self.proj_up
        if self.proj_up_bias is not None:
            up = up + self.proj_up_bias
        x_m, z = torch.split(up, self.inner, dim=-1)
        c_state, n_state, m_state = states[0], states[1], states[2]
        keep2 = keep.unsqueeze(-1)
        if self.kernel > 0:
            window = torch.cat([(states[3] * keep2.unsqueeze(-1))[:, 1:], x_m.unsqueeze(1)], dim=1)  # Slice + Concat
            conv = (window * self.conv_weight).sum(dim=1)
            if self.conv_bias is not None:
                conv = conv + self.conv_bias
        else:
            conv = x_m
        conv_act = F.silu(conv)
        qk = conv_act.reshape(-1, self.proj_heads, 1, bs) @ self.qk_weight  # [B, P, 1, 2bs]
        q, k = torch.split(qk, bs, dim=-1)
        v = x_m.reshape(-1, self.proj_heads, 1, bs) @ self.v_weight
        gates = torch.cat([conv_act, x_m], dim=-1) @ self.gate_weight + self.gate_bias
        i_pre, f_neg = torch.split(gates, nh, dim=-1)
        log_f_plus_m = m_state * keep2 - F.softplus(f_neg)  # log(sigmoid(f)) + m
        m_new = torch.maximum(log_f_plus_m, i_pre)  # [B, NH]
        # A reset slot forgets its history through the forget gate: f * keep scales C and n by zero
        # with a [B, NH] multiply instead of a pass over the [B, NH, DH, DH] state.
        f_act = (torch.exp(log_f_plus_m - m_new) * keep2).reshape(-1, nh, 1, 1)
        i_act = torch.exp(i_pre - m_new).reshape(-1, nh, 1, 1)
        q4 = q.reshape(-1, nh, 1, dh)
        ik = i_act * k.reshape(-1, nh, dh, 1)  # [B, NH, DH, 1], already scaled by 1/sqrt(DH)
        c_new = f_act * c_state + ik @ v.reshape(-1, nh, 1, dh)  # outer product as a MatMul
        n_new = f_act.reshape(-1, nh, 1) * n_state + ik.reshape(-1, nh, dh)
        h_num = q4 @ c_new  # [B, NH, 1, DH]
        qn = q4 @ n_new.unsqueeze(-1)  # [B, NH, 1, 1]
        h_den = torch.maximum(qn.abs(), torch.exp(-m_new).reshape(-1, nh, 1, 1)) + MLSTM_EPS
        h = F.layer_norm(h_num / h_den, (dh,), None, None, LAYER_NORM_EPS) * self.outnorm_weight
        h = h.reshape(-1, self.inner) + self.skip * conv_act
        y = (h * F.silu(z)) @ self.proj_down
        if self.proj_down_bias is not None:
            y = y + self.proj_down_bias
        next_states = [c_new, n_new, m_new]
        if self.kernel > 0:
            next_states.append(window)
        return x + y, next_states


def _maybe(param):
    return None if param is None else nn.Parameter(param.detach().clone(), requires_grad=False)


class XLSTMStep(nn.Module):
    """forward(obs, prev_action, reward, target_return, reset, *states) -> (action, *next_states)."""

    def __init__(self, policy: XLSTMPolicy):
        super().__init__()
        self.policy = policy
        config = policy.config
        if config.slstm_at:
            raise ValueError(
                f"slstm_at={config.slstm_at}: the step export handles mLSTM blocks only so far; "
                "train with slstm_at=() to deploy"
            )
        self.blocks = nn.ModuleList(MLSTMBlockStep(block, i) for i, block in enumerate(policy.backbone.blocks))
        post = policy.backbone.post_blocks_norm
        self.post_norm_weight = None
        if not isinstance(post, nn.Identity):
            self.post_norm_weight = nn.Parameter(post.weight_proxy.detach().clone(), requires_grad=False)
        self.specs = [StateSpec("rtg", (1,), init=float(config.target_return))]
        for block in self.blocks:
            self.specs.extend(block.state_specs())

    def initial_states(self, batch: int) -> list[torch.Tensor]:
        return initial_states(self.specs, batch)

    def forward(self, obs, prev_action, reward, target_return, reset, *states):
        keep = torch.logical_not(reset).to(obs.dtype)
        # The graph enforces what a reset means, whatever the host sent: zero history, fresh state.
        prev_action = prev_action * keep.unsqueeze(-1)
        reward = reward * keep
        rtg = torch.where(reset.unsqueeze(-1), target_return.unsqueeze(-1), states[0] - reward.unsqueeze(-1))
        x = self.policy.tokens(obs, prev_action, reward, rtg.squeeze(-1))
        next_states = [rtg]
        cursor = 1
        for block in self.blocks:
            count = len(block.state_specs())
            x, new = block(x, list(states[cursor : cursor + count]), keep)
            next_states.extend(new)
            cursor += count
        if self.post_norm_weight is not None:
            x = F.layer_norm(x, (self.post_norm_weight.shape[0],), self.post_norm_weight, None, LAYER_NORM_EPS)
        return (self.policy.action_from_features(x), *next_states)
