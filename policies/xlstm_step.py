"""The xLSTM policy in step form, written for export: one timestep in, explicit state in and out.

It reads the parameters of `XLSTMPolicy` (and so of the xlstm package's block stack) but re-states the
step math so that the traced graph is lean and exportable: no in-place updates of inputs (the package's
conv step does `copy_`), no data-dependent branches, log-sigmoid as -softplus(-x) so it stays finite in
fp16, headwise projections as one dense MatMul, per-slot resets with `Where` on the state itself.
State names and shapes (batch first) follow the step-graph contract in DESIGN.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .xlstm_policy import XLSTMPolicy

LAYER_NORM_EPS = 1e-5  # xlstm.components.ln.LayerNorm and MultiHeadLayerNorm default
MLSTM_EPS = 1e-6  # xlstm recurrent_step_stabilized_simple default


@dataclass(frozen=True)
class StateSpec:
    name: str
    shape: tuple[int, ...]  # without the batch dimension
    init: float = 0.0
    dtype: str = "float32"


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
        # q and k read the same input: one MatMul for both.
        qk = torch.cat([headwise_to_dense(layer.q_proj.weight.detach()), headwise_to_dense(layer.k_proj.weight.detach())], 1)
        self.qk_proj = nn.Parameter(qk, requires_grad=False)
        self.v_proj = nn.Parameter(headwise_to_dense(layer.v_proj.weight.detach()), requires_grad=False)
        for name in ("q_proj", "k_proj", "v_proj"):
            if getattr(layer, name).bias is not None:
                raise ValueError("biased q/k/v projections are not supported by the step export")
        cell = layer.mlstm_cell
        # The forget gate is stored negated: log(sigmoid(f)) = -softplus(-f) then needs no Neg node.
        gates = torch.cat([cell.igate.weight.detach(), -cell.fgate.weight.detach()], 0)  # [2NH, 3*inner]
        self.gate_weight = nn.Parameter(gates.T.contiguous(), requires_grad=False)
        self.gate_bias = nn.Parameter(torch.cat([cell.igate.bias.detach(), -cell.fgate.bias.detach()]), requires_grad=False)
        self.outnorm_weight = nn.Parameter(
            cell.outnorm.weight_proxy.detach().reshape(self.heads, self.head_dim).clone(), requires_grad=False
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

    def forward(self, x: torch.Tensor, states: list[torch.Tensor]):
        xn = F.layer_norm(x, (self.norm_weight.shape[0],), self.norm_weight, None, LAYER_NORM_EPS)
        up = xn @ self.proj_up
        if self.proj_up_bias is not None:
            up = up + self.proj_up_bias
        x_m, z = torch.split(up, self.inner, dim=-1)
        c_state, n_state, m_state = states[0], states[1], states[2]
        next_states = []
        if self.kernel > 0:
            window = torch.cat([states[3][:, 1:], x_m.unsqueeze(1)], dim=1)  # shift: Slice + Concat
            conv = (window * self.conv_weight).sum(dim=1)
            if self.conv_bias is not None:
                conv = conv + self.conv_bias
            next_window = window
        else:
            conv = x_m
        conv_act = F.silu(conv)
        qk = conv_act @ self.qk_proj
        q, k = torch.split(qk, self.inner, dim=-1)
        v = x_m @ self.v_proj
        gates = torch.cat([q, k, v], dim=-1) @ self.gate_weight + self.gate_bias
        i_pre, f_neg = torch.split(gates, self.heads, dim=-1)
        log_f_plus_m = m_state - F.softplus(f_neg)  # log(sigmoid(f)) + m, finite in fp16
        m_new = torch.maximum(log_f_plus_m, i_pre)  # [B, NH]
        f_act = torch.exp(log_f_plus_m - m_new).unsqueeze(-1)  # [B, NH, 1]
        i_act = torch.exp(i_pre - m_new).unsqueeze(-1)
        qh = q.reshape(-1, self.heads, self.head_dim)
        kh = k.reshape(-1, self.heads, self.head_dim) * (1.0 / math.sqrt(self.head_dim))
        vh = v.reshape(-1, self.heads, self.head_dim)
        c_new = f_act.unsqueeze(-1) * c_state + (i_act * kh).unsqueeze(-1) * vh.unsqueeze(-2)
        n_new = f_act * n_state + i_act * kh
        h_num = (qh.unsqueeze(-1) * c_new).sum(dim=-2)  # q^T C -> [B, NH, DH]
        qn = (qh * n_new).sum(dim=-1, keepdim=True)
        h_den = torch.maximum(qn.abs(), torch.exp(-m_new).unsqueeze(-1)) + MLSTM_EPS
        h = h_num / h_den
        h = F.layer_norm(h, (self.head_dim,), None, None, LAYER_NORM_EPS) * self.outnorm_weight
        h = h.reshape(-1, self.inner) + self.skip * conv_act
        y = (h * F.silu(z)) @ self.proj_down
        if self.proj_down_bias is not None:
            y = y + self.proj_down_bias
        next_states = [c_new, n_new, m_new]
        if self.kernel > 0:
            next_states.append(next_window)
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
        return [torch.full((batch, *s.shape), s.init, dtype=torch.float32) for s in self.specs]

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
            block_states = [_reset_slot(s, keep) for s in states[cursor : cursor + count]]
            x, new = block(x, block_states)
            next_states.extend(new)
            cursor += count
        if self.post_norm_weight is not None:
            x = F.layer_norm(x, (self.post_norm_weight.shape[0],), self.post_norm_weight, None, LAYER_NORM_EPS)
        return (self.policy.action_from_features(x), *next_states)


def _reset_slot(state: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Zero the state of slots whose `reset` is set (every mLSTM state starts at zero).

    `keep` is float (1 keep, 0 reset): one Mul, no Shape/ConstantOfShape for a zeros tensor. States
    are finite, so multiplying by zero is exact.
    """
    return state * keep.reshape(-1, *([1] * (state.dim() - 1)))
