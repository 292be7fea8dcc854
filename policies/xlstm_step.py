"""The xLSTM policy in step form, written for export: one timestep in, explicit state in and out.

It reads the parameters of `XLSTMPolicy` (and so of the xlstm package's block stack) but re-states the
step math so that the traced graph is lean and exportable: no in-place updates of inputs (the package's
conv step does `copy_`), no data-dependent branches, log-sigmoid as -softplus(-x) so it stays finite in
fp16, headwise projections as batched MatMuls, gate projections folded, per-slot resets applied
through the forget gate instead of passes over the state.
Both block kinds of `xLSTMBlockStack` are covered: mLSTM blocks (`MLSTMBlockStep`) and sLSTM blocks
(`SLSTMBlockStep`), each with the block's gated feed-forward part when it has one (`FeedForwardStep`).
State names and shapes (batch first) follow the step-graph contract in policyrt/contract.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from policyrt.contract import StateTensor

from .step_contract import initial_states
from .xlstm_policy import XLSTMPolicy

LAYER_NORM_EPS = 1e-5  # xlstm.components.ln.LayerNorm and MultiHeadLayerNorm default
MLSTM_EPS = 1e-6  # xlstm recurrent_step_stabilized_simple default
FEEDFORWARD_ACTIVATIONS = {  # xlstm.components.feedforward._act_fn_registry
    "gelu": F.gelu,
    "relu": F.relu,
    "relu^2": lambda x: torch.square(F.relu(x)),
    "sigmoid": torch.sigmoid,
    "swish": F.silu,
    "selu": F.selu,
}


def headwise_to_dense(weight: torch.Tensor) -> torch.Tensor:
    """LinearHeadwiseExpand weight [H, out/H, in/H] -> block-diagonal [in, out] for x @ W."""
    heads, out_per, in_per = weight.shape
    dense = weight.new_zeros(heads * in_per, heads * out_per)
    for h in range(heads):
        dense[h * in_per : (h + 1) * in_per, h * out_per : (h + 1) * out_per] = weight[h].T
    return dense


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().clone().contiguous(), requires_grad=False)


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, size: int) -> torch.Tensor:
    # `size` is a Python int: x.shape[-1] would trace into a Shape op the exporter cannot make constant.
    return F.layer_norm(x, (size,), weight, None, LAYER_NORM_EPS)


class FeedForwardStep(nn.Module):
    """A block's gated feed-forward part with its pre-norm and residual: x + ffn(norm(x))."""

    def __init__(self, block):
        super().__init__()
        ffn = block.ffn
        cfg = ffn.config
        if cfg.ff_type != "ffn_gated":
            raise ValueError(f"feed-forward type {cfg.ff_type!r} is not supported by the step export")
        self.act = FEEDFORWARD_ACTIVATIONS[cfg.act_fn]
        self.up_dim = cfg._proj_up_dim
        self.dim = cfg.embedding_dim
        self.norm_weight = _frozen(block.ffn_norm.weight_proxy)
        self.proj_up = _frozen(ffn.proj_up.weight.T)
        self.proj_up_bias = _maybe(ffn.proj_up.bias)
        self.proj_down = _frozen(ffn.proj_down.weight.T)
        self.proj_down_bias = _maybe(ffn.proj_down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = _layer_norm(x, self.norm_weight, self.dim) @ self.proj_up
        if self.proj_up_bias is not None:
            up = up + self.proj_up_bias
        gate, value = torch.split(up, self.up_dim, dim=-1)
        y = (self.act(gate) * value) @ self.proj_down
        if self.proj_down_bias is not None:
            y = y + self.proj_down_bias
        return x + y


class MLSTMBlockStep(nn.Module):
    """One mLSTM block (pre-norm + mLSTM layer + residual [+ feed-forward]) for a single timestep."""

    def __init__(self, block, index: int):
        super().__init__()
        layer = block.xlstm
        cfg = layer.config
        self.index = index
        self.inner = cfg._inner_embedding_dim
        self.heads = cfg.num_heads
        self.head_dim = self.inner // self.heads
        self.kernel = cfg.conv1d_kernel_size
        self.ffn = None if block.ffn is None else FeedForwardStep(block)
        self.norm_weight = nn.Parameter(block.xlstm_norm.weight_proxy.detach().clone(), requires_grad=False)
        self.proj_up = nn.Parameter(layer.proj_up.weight.detach().T.contiguous(), requires_grad=False)
        self.proj_up_bias = _maybe(layer.proj_up.bias)
        if self.kernel > 0:
            conv = layer.conv1d.conv
            self.conv_weight = nn.Parameter(conv.weight.detach()[:, 0, :].T.contiguous(), requires_grad=False)
            self.conv_bias = _maybe(conv.bias)
        # Headwise projections stay headwise: one batched MatMul over [P, bs, bs] blocks. A dense
        # block-diagonal matrix would stream ~1 MB of zeros per block and step, which dominates at B=1.
        wq, wk, wv = (getattr(layer, n).weight.detach() for n in ("q_proj", "k_proj", "v_proj"))
        self.proj_heads, self.blocksize = wq.shape[0], wq.shape[2]
        scale = 1.0 / math.sqrt(self.head_dim)  # the mLSTM's key scaling, folded into the weights
        self.qk_weight = nn.Parameter(torch.cat([wq.transpose(1, 2), scale * wk.transpose(1, 2)], 2), requires_grad=False)
        self.v_weight = nn.Parameter(wv.transpose(1, 2).contiguous(), requires_grad=False)
        # Biased q/k/v (xlstm's stack-level `bias=True`): biases per projection head, k's scaled like its weight.
        self.qk_bias = self.v_bias = None
        bq, bk, bv = (getattr(layer, n).bias for n in ("q_proj", "k_proj", "v_proj"))
        if bq is not None:
            p, b = self.proj_heads, self.blocksize
            self.qk_bias = _frozen(torch.cat([bq.detach().reshape(p, 1, b), scale * bk.detach().reshape(p, 1, b)], 2))
            self.v_bias = _frozen(bv.reshape(p, 1, b))
        # The gates read [q, k, v], which are linear in (conv_act, x_m): fold the projections into the
        # gate weights so the gates need one MatMul on [conv_act, x_m]. Forget gate stored negated:
        # log(sigmoid(f)) = -softplus(-f) then needs no Neg node and stays finite in fp16.
        cell = layer.mlstm_cell
        gate_w = torch.cat([cell.igate.weight.detach(), -cell.fgate.weight.detach()], 0).T  # [3*inner, 2NH]
        gate_q, gate_k, gate_v = gate_w.split(self.inner, 0)
        dense_q, dense_k, dense_v = (headwise_to_dense(w) for w in (wq, wk, wv))
        folded = torch.cat([dense_q @ gate_q + dense_k @ gate_k, dense_v @ gate_v], 0)  # [2*inner, 2NH]
        self.gate_weight = nn.Parameter(folded.contiguous(), requires_grad=False)
        gate_bias = torch.cat([cell.igate.bias.detach(), -cell.fgate.bias.detach()])
        if bq is not None:  # the gates read the biased q, k, v: fold their biases in too
            gate_bias = gate_bias + bq.detach() @ gate_q + bk.detach() @ gate_k + bv.detach() @ gate_v
        self.gate_bias = nn.Parameter(gate_bias, requires_grad=False)
        self.outnorm_weight = nn.Parameter(
            cell.outnorm.weight_proxy.detach().reshape(self.heads, 1, self.head_dim).clone(), requires_grad=False
        )
        self.skip = nn.Parameter(layer.learnable_skip.detach().clone(), requires_grad=False)
        self.proj_down = nn.Parameter(layer.proj_down.weight.detach().T.contiguous(), requires_grad=False)
        self.proj_down_bias = _maybe(layer.proj_down.bias)

    def state_specs(self) -> list[StateTensor]:
        p = f"block{self.index}"
        specs = [
            StateTensor(f"{p}.C", (self.heads, self.head_dim, self.head_dim)),
            StateTensor(f"{p}.n", (self.heads, self.head_dim)),
            StateTensor(f"{p}.m", (self.heads,)),
        ]
        if self.kernel > 0:
            specs.append(StateTensor(f"{p}.conv", (self.kernel, self.inner)))
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
        # Heads-major: one [B, bs] x [bs, out] product per projection head, whatever the batch. The
        # batch-major form ([B, P, 1, bs] @ [P, bs, out]) runs B * P products of one row each, which
        # made a batch of 16 cost 6.6x a batch of 1.
        qk = conv_act.reshape(-1, self.proj_heads, bs).transpose(0, 1) @ self.qk_weight  # [P, B, 2bs]
        v = x_m.reshape(-1, self.proj_heads, bs).transpose(0, 1) @ self.v_weight
        if self.qk_bias is not None:
            qk = qk + self.qk_bias
            v = v + self.v_bias
        q, k = torch.split(qk.transpose(0, 1), bs, dim=-1)  # [B, P, bs]
        v = v.transpose(0, 1)
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
        x = x + y
        if self.ffn is not None:
            x = self.ffn(x)
        return x, next_states


class SLSTMBlockStep(nn.Module):
    """One sLSTM block (pre-norm + sLSTM layer + residual [+ feed-forward]) for a single timestep.

    Matches the package's `sLSTMBlock.step` (vanilla backend) but reads the cell's weights through its
    EXTERNAL format (`cell.recurrent_kernel` [NH, DH_in, 4, DH_out], `cell.bias` [NH, 4, DH]), so the
    math here does not depend on the backend's internal layout (vanilla and CUDA differ:
    xlstm/blocks/slstm/cell.py, `_recurrent_kernel_ext2int` / `_bias_ext2int` of each backend).
    """

    def __init__(self, block, index: int):
        super().__init__()
        layer = block.xlstm
        cfg = layer.config
        if cfg.function != "slstm" or cfg.num_gates != 4:
            raise ValueError(f"sLSTM cell function {cfg.function!r} is not supported by the step export (only 'slstm')")
        self.index = index
        self.dim = cfg.embedding_dim
        self.heads = cfg.num_heads
        self.head_dim = self.dim // self.heads
        self.kernel = cfg.conv1d_kernel_size
        self.ffn = None if block.ffn is None else FeedForwardStep(block)
        self.norm_weight = _frozen(block.xlstm_norm.weight_proxy)
        if self.kernel > 0:
            conv = layer.conv1d.conv
            self.conv_weight = _frozen(conv.weight[:, 0, :].T)  # [KS, E]
            self.conv_bias = _maybe(conv.bias)
        # All pre-activations in one headwise batched MatMul: per head, [conv_act, x, h] (3*DH) times
        # a [3*DH, 4*DH] block whose columns are the gates (i, f, z, o) of that head. The package feeds
        # the cell `i = fgate(conv_act)`, `f = igate(conv_act)` (sLSTMLayer.step/forward name them
        # crosswise); what matters is which weight feeds which cell gate, kept here exactly.
        def head_blocks(linear):  # LinearHeadwiseExpand weight [NH, out, in] -> per head x @ W: [NH, in, out]
            return linear.weight.detach().transpose(1, 2)

        w_i, w_f = head_blocks(layer.fgate), head_blocks(layer.igate)
        w_z, w_o = head_blocks(layer.zgate), head_blocks(layer.ogate)
        zeros = torch.zeros_like(w_i)
        cell = layer.slstm_cell
        recurrent = cell.recurrent_kernel.clone().detach()  # external [NH, DH_in, 4, DH_out]
        recurrent = recurrent.reshape(self.heads, self.head_dim, 4 * self.head_dim)
        conv_rows = torch.cat([w_i, w_f, zeros, zeros], 2)
        x_rows = torch.cat([zeros, zeros, w_z, w_o], 2)
        if self.kernel > 0:
            rows = [conv_rows, x_rows, recurrent]
        else:  # without a conv, i and f read the normed input itself: merge the two row blocks
            rows = [conv_rows + x_rows, recurrent]
        self.gate_weight = _frozen(torch.cat(rows, 1))  # [NH, 3*DH (or 2*DH), 4*DH]
        self.gate_bias = _frozen(cell.bias.clone().detach().reshape(self.heads, 1, 4 * self.head_dim))
        norm = layer.group_norm.weight_proxy
        self.group_norm_weight = None if norm is None else _frozen(norm.reshape(self.heads, self.head_dim))

    def state_specs(self) -> list[StateTensor]:
        p = f"block{self.index}"
        specs = [StateTensor(f"{p}.{name}", (self.dim,)) for name in ("h", "c", "n", "m")]
        if self.kernel > 0:
            specs.append(StateTensor(f"{p}.conv", (self.kernel, self.dim)))
        return specs

    def forward(self, x: torch.Tensor, states: list[torch.Tensor], keep: torch.Tensor):
        """`keep` [B] is 1.0 for slots that continue and 0.0 for slots that reset this tick."""
        nh, dh = self.heads, self.head_dim
        keep2 = keep.unsqueeze(-1)
        # A reset slot starts from the package's fresh state: everything zero (multiplying by keep is
        # cheap here: the sLSTM state is [B, E]).
        h, c, n, m = (s * keep2 for s in states[:4])
        xn = _layer_norm(x, self.norm_weight, self.dim)
        parts = [xn.reshape(-1, nh, 1, dh)]
        if self.kernel > 0:
            window = torch.cat([(states[4] * keep2.unsqueeze(-1))[:, 1:], xn.unsqueeze(1)], dim=1)  # Slice + Concat
            conv = (window * self.conv_weight).sum(dim=1)
            if self.conv_bias is not None:
                conv = conv + self.conv_bias
            parts.insert(0, F.silu(conv).reshape(-1, nh, 1, dh))
        parts.append(h.reshape(-1, nh, 1, dh))
        raw = torch.cat(parts, dim=-1) @ self.gate_weight + self.gate_bias  # [B, NH, 1, 4*DH]
        i_raw, f_raw, z_raw, o_raw = (g.reshape(-1, self.dim) for g in torch.split(raw, dh, dim=-1))
        log_f_plus_m = m - F.softplus(-f_raw)  # m + log(sigmoid(f))
        # The package's pointwise step takes `m_new = i_raw` when `torch.all(n == 0)` over the whole
        # batch: a data-dependent branch (dynamo export fails, TorchScript bakes in one side: ~0.34 off).
        # Per element is identical for B=1 and for resets of all slots at once (n >= 1 after a step,
        # so n == 0 only in a fresh state), gives each slot of a batch its own fresh-state semantics,
        # and is also what the CUDA kernel does (slstm_pointwise.cu tests n == 0 per element).
        m_new = torch.where(n == 0, i_raw, torch.maximum(i_raw, log_f_plus_m))
        i_gate = torch.exp(i_raw - m_new)  # <= 1 in both cases, so the package's min(., 1) is a no-op
        f_gate = torch.clamp(torch.exp(log_f_plus_m - m_new), max=1.0)  # can exceed 1 (even inf) when n == 0
        c_new = f_gate * c + i_gate * torch.tanh(z_raw)
        n_new = f_gate * n + i_gate
        h_new = torch.sigmoid(o_raw) * c_new / n_new
        y = F.layer_norm(h_new.reshape(-1, nh, dh), (dh,), None, None, LAYER_NORM_EPS)  # group norm, NH groups
        if self.group_norm_weight is not None:
            y = y * self.group_norm_weight
        x = x + y.reshape(-1, self.dim)
        if self.ffn is not None:
            x = self.ffn(x)
        next_states = [h_new, c_new, n_new, m_new]
        if self.kernel > 0:
            next_states.append(window)
        return x, next_states


def _maybe(param):
    return None if param is None else nn.Parameter(param.detach().clone(), requires_grad=False)


class XLSTMStep(nn.Module):
    """forward(obs, prev_action, reward, target_return, reset, *states) -> (action, *next_states)."""

    def __init__(self, policy: XLSTMPolicy):
        super().__init__()
        self.policy = policy
        config = policy.config
        self.blocks = nn.ModuleList(
            SLSTMBlockStep(block, i) if block.config.slstm is not None else MLSTMBlockStep(block, i)
            for i, block in enumerate(policy.backbone.blocks)
        )
        post = policy.backbone.post_blocks_norm
        self.post_norm_weight = None
        if not isinstance(post, nn.Identity):
            self.post_norm_weight = nn.Parameter(post.weight_proxy.detach().clone(), requires_grad=False)
        self.specs = [StateTensor("rtg", (1,), init=float(config.target_return))]
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
