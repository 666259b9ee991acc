"""AF2's audio transformer: 3 post-norm self-attention layers over all windows' CLAP tokens.

Its output is the cross-attention memory of the decoder. Each layer is one `tick` of
progress for a watchdog (`edge.model.progress`). Parameter names follow the official
`audio_transformer_clap.*` keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import AudioTransformerDims
from .mel import constant
from .progress import tick

ROPE_BASE = 4096.0


def rotary_inv_freq(rot_dim: int) -> torch.Tensor:
    return 1.0 / (ROPE_BASE ** (torch.arange(0, rot_dim, 2).float() / rot_dim))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_partial_rotary(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate the first `freqs.shape[-1]` dims of each head (GPT-J partial rotary), in float32."""
    rot = freqs.shape[-1]
    dtype = t.dtype
    t = t.float()
    head, tail = t[..., :rot], t[..., rot:]
    head = head * freqs.cos() + rotate_half(head) * freqs.sin()
    return torch.cat((head, tail), dim=-1).to(dtype)


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.n_head, self.d_k = n_head, d_model // n_head
        self.w_qs = nn.Linear(d_model, d_model, bias=False)
        self.w_ks = nn.Linear(d_model, d_model, bias=False)
        self.w_vs = nn.Linear(d_model, d_model, bias=False)
        self.fc = nn.Linear(d_model, d_model, bias=False)
        self.layer_norm = nn.LayerNorm(d_model, eps=1e-6)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q = self.w_qs(x).view(B, N, self.n_head, self.d_k).transpose(1, 2)  # (B, h, N, d_k)
        k = self.w_ks(x).view(B, N, self.n_head, self.d_k).transpose(1, 2)
        v = self.w_vs(x).view(B, N, self.n_head, self.d_k).transpose(1, 2)
        q, k = apply_partial_rotary(q, freqs), apply_partial_rotary(k, freqs)
        scores = torch.matmul(q / math.sqrt(self.d_k), k.transpose(2, 3))  # (B, h, N, N)
        fill = max(-1e9, torch.finfo(scores.dtype).min)
        scores = scores.masked_fill(key_mask[:, None, None, :] == 0, fill)
        out = torch.matmul(F.softmax(scores, dim=-1), v)
        out = self.fc(out.transpose(1, 2).reshape(B, N, D))
        return self.layer_norm(out + x)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_inner: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, d_inner)
        self.w_2 = nn.Linear(d_inner, d_model)
        self.layer_norm = nn.LayerNorm(d_model, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.w_2(F.relu(self.w_1(x))) + x)


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, d: AudioTransformerDims) -> None:
        super().__init__()
        self.slf_attn = SelfAttention(d_model, d.n_head)
        self.pos_ffn = FeedForward(d_model, d.d_inner)

    def forward(self, x, key_mask, freqs):
        return self.pos_ffn(self.slf_attn(x, key_mask, freqs))


class AudioTransformer(nn.Module):
    """(B, N, D) tokens + (B, N) key mask -> (B, N, D) memory."""

    def __init__(self, d_model: int, d: AudioTransformerDims) -> None:
        super().__init__()
        self.d_model = d_model
        self.rot_dim = max((d_model // d.n_head) // 2, 32)
        self.layer_norm = nn.LayerNorm(d_model, eps=1e-6)
        self.layer_stack = nn.ModuleList(EncoderLayer(d_model, d) for _ in range(d.n_layers))
        self.register_buffer("inv_freq", None, persistent=False)
        self.init_buffers()

    def init_buffers(self) -> None:
        self.inv_freq = constant(rotary_inv_freq, self.layer_norm.weight, self.rot_dim)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        N = x.shape[1]
        t = torch.arange(N, device=x.device, dtype=torch.float32)
        freqs = torch.outer(t, self.inv_freq.float())
        freqs = torch.cat((freqs, freqs), dim=-1)  # (N, rot_dim)
        x = self.layer_norm(x * self.d_model**0.5)
        for layer in self.layer_stack:
            x = layer(x, key_mask, freqs)
            # one layer over 30 windows (1920 tokens) takes ~0.6 s on a slow CPU, much longer
            # on a small board: a watchdog sees the call turn layer by layer (edge.model.progress)
            tick()
        return x
