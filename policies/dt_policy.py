"""Continuous-control Decision Transformer, parameter for parameter the Hugging Face layout.

Tokens (return-to-go, state, action) per timestep plus a learned timestep embedding, GPT-2 blocks,
the action read at the state token through a tanh head. The module names match
`transformers.DecisionTransformerModel` (encoder.h.N.attn.c_attn, embed_timestep, predict_action.0,
...), so a Hugging Face state dict loads directly and transformers is not needed to train or export.
GPT-2's Conv1D is a Linear with its weight stored [in, out]; it is kept that way here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .dt_config import DTPolicyConfig
from .policy_buffers import register_config_buffers

MASK_VALUE = -1e4  # additive attention mask: exp() underflows to exactly 0 in fp32, and stays finite in fp16


def activation(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "gelu_new":  # GPT-2's tanh approximation
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))
    return F.gelu(x)


class Conv1D(nn.Module):
    """GPT-2's projection: y = x @ weight + bias with weight [in, out]."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.02)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return x @ self.weight + self.bias


class Attention(nn.Module):
    def __init__(self, config: DTPolicyConfig, layer_idx: int):
        super().__init__()
        self.heads = config.n_head
        self.head_dim = config.hidden_size // config.n_head
        self.c_attn = Conv1D(config.hidden_size, 3 * config.hidden_size)
        self.c_proj = Conv1D(config.hidden_size, config.hidden_size)
        self.scaling = self.head_dim**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scaling /= float(layer_idx + 1)

    def forward(self, x, additive_mask, queries: slice | None = None):
        """x [B, T, H]; additive_mask broadcastable to [B, heads, Tq, T]; `queries` restricts the query rows."""
        q, k, v = self.c_attn(x).split(self.heads * self.head_dim, dim=-1)
        if queries is not None:
            q = q[:, queries]
        if self.heads == 1:  # no head split: keeps Shape/Reshape/Transpose nodes out of the graph
            weights = torch.softmax((q @ k.transpose(-1, -2)) * self.scaling + additive_mask[:, 0], dim=-1)
            return self.c_proj(weights @ v)
        q, k, v = (t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2) for t in (q, k, v))
        weights = torch.softmax((q @ k.transpose(-1, -2)) * self.scaling + additive_mask, dim=-1)
        return self.c_proj((weights @ v).transpose(1, 2).flatten(-2))


class MLP(nn.Module):
    def __init__(self, config: DTPolicyConfig):
        super().__init__()
        self.c_fc = Conv1D(config.hidden_size, config.inner_size)
        self.c_proj = Conv1D(config.inner_size, config.hidden_size)
        self.act = config.activation_function

    def forward(self, x):
        return self.c_proj(activation(self.act, self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: DTPolicyConfig, layer_idx: int):
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.attn = Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=eps)
        self.mlp = MLP(config)

    def forward(self, x, additive_mask, queries: slice | None = None):
        attended = self.attn(self.ln_1(x), additive_mask, queries)
        x = (x if queries is None else x[:, queries]) + attended
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, config: DTPolicyConfig):
        super().__init__()
        if config.position_bias:
            self.wpe = nn.Embedding(config.n_positions, config.hidden_size)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)


class DTPolicy(nn.Module):
    def __init__(self, config: DTPolicyConfig):
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.encoder = Encoder(config)
        self.embed_timestep = nn.Embedding(config.max_ep_len, h)
        self.embed_return = nn.Linear(1, h)
        self.embed_state = nn.Linear(config.obs_dim, h)
        self.embed_action = nn.Linear(config.act_dim, h)
        self.embed_ln = nn.LayerNorm(h)
        self.predict_state = nn.Linear(h, config.obs_dim)
        self.predict_action = nn.Sequential(nn.Linear(h, config.act_dim), *([nn.Tanh()] if config.action_tanh else []))
        self.predict_return = nn.Linear(h, 1)
        register_config_buffers(self, config)

    def normalize_obs(self, obs):
        return (obs - self.obs_mean) / self.obs_std

    def stacked_tokens(self, states, actions, returns_to_go, timesteps):
        """[B, K, ...] normalized inputs -> [B, 3K, H] tokens (R_1, s_1, a_1, R_2, ...) after embed_ln."""
        time = self.embed_timestep(timesteps)
        tokens = torch.stack(
            (self.embed_return(returns_to_go) + time, self.embed_state(states) + time, self.embed_action(actions) + time),
            dim=2,
        )
        tokens = self.embed_ln(tokens.reshape(tokens.shape[0], -1, self.config.hidden_size))
        if self.config.position_bias:
            tokens = tokens + self.encoder.wpe.weight[0]
        return tokens

    def additive_mask(self, valid: torch.Tensor) -> torch.Tensor:
        """valid [B, K] (1 = real timestep) -> additive causal + padding mask [B, 1, 3K, 3K]."""
        tokens = valid.repeat_interleave(3, dim=1).to(torch.bool)
        n = tokens.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()
        allowed = causal & tokens[:, None, None, :]
        return torch.where(allowed, 0.0, MASK_VALUE)

    def action_from_hidden(self, state_token_hidden):
        """Hidden state at a state token -> action in the robot's units."""
        raw = self.predict_action(state_token_hidden)
        return self.act_center + self.act_half_range * raw if self.config.action_tanh else raw

    def forward(self, states, actions, returns_to_go, timesteps, attention_mask=None):
        """Hugging Face's signature and semantics on normalized states and scaled returns-to-go:
        states [B,K,obs], actions [B,K,act], returns_to_go [B,K,1], timesteps [B,K] -> action per timestep
        (the tanh output, mapped to the action bounds)."""
        if attention_mask is None:
            attention_mask = torch.ones(states.shape[:2], dtype=torch.long, device=states.device)
        x = self.stacked_tokens(states, actions, returns_to_go, timesteps)
        mask = self.additive_mask(attention_mask)
        for block in self.encoder.h:
            x = block(x, mask)
        x = self.encoder.ln_f(x)
        return self.action_from_hidden(x[:, 1::3])
