"""Qwen2 decoder with a gated cross-attention block before every layer (AF2's language model).

gpt-fast style: the self-attention KV cache is a preallocated buffer per layer, and the
cross-attention K/V of every layer are computed once per query from the audio memory
(`Decoder.cross_kv`) and reused at every decoding step. Module names follow the official
`lang_encoder.model.*` keys so the loader copies tensors without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import LMDims, XAttnDims


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64,
                                             device=positions.device).float() / head_dim))
    freqs = torch.outer(positions.float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, head_dim)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@dataclass
class CrossKV:
    """Per-layer cross-attention keys/values of one memory, plus its key mask."""

    k: list[torch.Tensor]  # each (B, heads, M, dim_head)
    v: list[torch.Tensor]
    mask: torch.Tensor  # (B, M) bool, True = attend


class SelfAttention(nn.Module):
    def __init__(self, d: LMDims) -> None:
        super().__init__()
        hd = d.head_dim
        self.n_head, self.n_kv, self.hd = d.num_attention_heads, d.num_key_value_heads, hd
        self.q_proj = nn.Linear(d.hidden_size, self.n_head * hd, bias=True)
        self.k_proj = nn.Linear(d.hidden_size, self.n_kv * hd, bias=True)
        self.v_proj = nn.Linear(d.hidden_size, self.n_kv * hd, bias=True)
        self.o_proj = nn.Linear(self.n_head * hd, d.hidden_size, bias=False)
        self.k_cache: torch.Tensor | None = None  # (B, n_kv, S_max, hd), set by setup_cache
        self.v_cache: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                input_pos: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.hd).transpose(1, 2)  # (B, h, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if input_pos is None:  # full forward, no cache
            mask = None
            causal = True
        else:  # write this step into the cache, attend over everything written so far
            self.k_cache[:, :, input_pos] = k
            self.v_cache[:, :, input_pos] = v
            S = int(input_pos[-1]) + 1
            k, v = self.k_cache[:, :, :S], self.v_cache[:, :, :S]
            mask = input_pos[:, None] >= torch.arange(S, device=x.device)[None, :]  # (T, S)
            causal = False
        # grouped-query attention without materialising repeated K/V heads
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and T > 1,
                                             enable_gqa=self.n_head != self.n_kv)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, d: LMDims) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d.hidden_size, d.intermediate_size, bias=False)
        self.up_proj = nn.Linear(d.hidden_size, d.intermediate_size, bias=False)
        self.down_proj = nn.Linear(d.intermediate_size, d.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """The ordinary Qwen2 layer."""

    def __init__(self, d: LMDims) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(d.hidden_size, d.rms_norm_eps)
        self.self_attn = SelfAttention(d)
        self.post_attention_layernorm = RMSNorm(d.hidden_size, d.rms_norm_eps)
        self.mlp = MLP(d)

    def forward(self, x, cos, sin, input_pos):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, input_pos)
        return x + self.mlp(self.post_attention_layernorm(x))


class CrossAttention(nn.Module):
    """Text queries attend to every (unmasked) audio memory token."""

    def __init__(self, dim: int, dim_audio: int, x: XAttnDims) -> None:
        super().__init__()
        inner = x.heads * x.dim_head
        self.heads, self.dim_head, self.scale = x.heads, x.dim_head, x.dim_head**-0.5
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim_audio, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, M, dim_audio) -> k, v each (B, heads, M, dim_head). Once per query."""
        B, M, _ = memory.shape
        k, v = self.to_kv(memory).chunk(2, dim=-1)
        # contiguous once per query, not a strided copy inside every decoding step's matmul
        k = k.reshape(B, M, self.heads, self.dim_head).transpose(1, 2).contiguous()
        v = v.reshape(B, M, self.heads, self.dim_head).transpose(1, 2).contiguous()
        return k, v

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.to_q(self.norm(x)).view(B, T, self.heads, self.dim_head).transpose(1, 2)
        sim = torch.matmul(q * self.scale, k.transpose(-1, -2))  # (B, h, T, M)
        sim = sim.masked_fill(~mask[:, None, None, :], -torch.finfo(sim.dtype).max)
        sim = sim - sim.amax(dim=-1, keepdim=True)
        out = torch.matmul(sim.softmax(dim=-1), v)  # (B, h, T, dh)
        return self.to_out(out.transpose(1, 2).reshape(B, T, -1))


class GatedCrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, dim_audio: int, x: XAttnDims) -> None:
        super().__init__()
        self.attn = CrossAttention(dim, dim_audio, x)
        self.attn_gate = nn.Parameter(torch.zeros(1))
        self.ff = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * x.ff_mult, bias=False),
            nn.GELU(),
            nn.Linear(dim * x.ff_mult, dim, bias=False),
        )
        self.ff_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x, k, v, mask):
        x = x + self.attn(x, k, v, mask) * self.attn_gate.tanh()
        return x + self.ff(x) * self.ff_gate.tanh()


class FlamingoLayer(nn.Module):
    def __init__(self, d: LMDims, dim_audio: int, x: XAttnDims, with_xattn: bool) -> None:
        super().__init__()
        self.gated_cross_attn_layer_sound = (
            GatedCrossAttentionBlock(d.hidden_size, dim_audio, x) if with_xattn else None
        )
        self.decoder_layer = DecoderLayer(d)

    def forward(self, h, cos, sin, input_pos, k, v, mask):
        if self.gated_cross_attn_layer_sound is not None:
            h = self.gated_cross_attn_layer_sound(h, k, v, mask)
        return self.decoder_layer(h, cos, sin, input_pos)


class TokenEmbedding(nn.Module):
    """Token embedding table (also the tied output projection). No init: always loaded."""

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class Decoder(nn.Module):
    def __init__(self, d: LMDims, dim_audio: int, x: XAttnDims) -> None:
        super().__init__()
        self.d = d
        self.embed_tokens = TokenEmbedding(d.vocab_size, d.hidden_size)
        self.layers = nn.ModuleList(
            FlamingoLayer(d, dim_audio, x, (i + 1) % x.every_n_layers == 0)
            for i in range(d.num_hidden_layers)
        )
        self.norm = RMSNorm(d.hidden_size, d.rms_norm_eps)
        self.lm_head = None if d.tie_word_embeddings else nn.Linear(d.hidden_size, d.vocab_size,
                                                                    bias=False)

    def cross_kv(self, memory: torch.Tensor, mask: torch.Tensor) -> CrossKV:
        """memory (B, M, dim_audio), mask (B, M) -> every layer's cross K/V, computed once."""
        ks, vs = [], []
        for layer in self.layers:
            blk = layer.gated_cross_attn_layer_sound
            k, v = blk.attn.kv(memory) if blk is not None else (None, None)
            ks.append(k)
            vs.append(v)
        return CrossKV(ks, vs, mask.bool())

    def setup_cache(self, batch: int, max_seq: int) -> None:
        d = self.d
        p = self.embed_tokens.weight
        for layer in self.layers:
            att = layer.decoder_layer.self_attn
            shape = (batch, d.num_key_value_heads, max_seq, d.head_dim)
            att.k_cache = torch.zeros(shape, dtype=p.dtype, device=p.device)
            att.v_cache = torch.zeros(shape, dtype=p.dtype, device=p.device)

    def forward(self, ids: torch.Tensor, xkv: CrossKV, input_pos: torch.Tensor | None = None,
                last_only: bool = False) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, V) in float32. `input_pos` (T,) selects the cached path;
        `last_only` projects only the last position onto the vocabulary (prefill)."""
        h = self.embed_tokens(ids)
        pos = input_pos if input_pos is not None else torch.arange(ids.shape[1], device=ids.device)
        cos, sin = rope_cos_sin(pos, self.d.head_dim, self.d.rope_theta, h.dtype)
        for i, layer in enumerate(self.layers):
            h = layer(h, cos, sin, input_pos, xkv.k[i], xkv.v[i], xkv.mask)
        h = self.norm(h[:, -1:] if last_only else h)
        w = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, w).float()
