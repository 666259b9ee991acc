"""Qwen2 decoder with a gated cross-attention block before every layer (AF2's language model).

gpt-fast style: the cross-attention K/V of every layer are computed once per query from the
audio memory (`Decoder.cross_kv`) and reused at every decoding step. Module names follow the
official `lang_encoder.model.*` keys so the loader copies tensors without renaming.

Two cached paths share every module:

* eager (`setup_cache` + `forward(input_pos=...)`): attention over the written prefix (its
  length read back to the host in every layer); the cache buffers are kept per batch size and
  reused while they are long enough (`AF2.score` runs every cycle). Kept as the reference the
  static path is tested against, and for `AF2.score`.
* static (`StaticCache` + `forward_static`): buffers allocated once per (batch, max length),
  attention over the whole cache with a boolean mask built on the device from position
  tensors, RoPE from a precomputed table, cross K/V in fixed buffers with a key mask. No shape
  changes and no host sync inside a step, so the one-token step can be captured in a CUDA graph
  (edge/model/generate.py) and exported with fixed shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

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


def rope_table(max_seq: int, head_dim: int, theta: float, dtype: torch.dtype,
               device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (max_seq, head_dim) for positions 0..max_seq-1: row p is bit-identical to
    `rope_cos_sin(tensor([p]))` (the same elementwise float ops), so indexing the table changes
    no result."""
    return rope_cos_sin(torch.arange(max_seq, device=device), head_dim, theta, dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


@dataclass
class CrossKV:
    """Per-layer cross-attention keys/values of one memory, plus its key mask.

    With `memory` set (`Decoder.cross_memory`) the K/V are not materialised (`k`/`v` hold
    None): each layer attends through its `to_kv` projection folded into the query side
    (`CrossAttention.attend_memory`), which is cheaper for a few query tokens (a scored
    prompt) than projecting every memory token; the eager path only (not `forward_static`)."""

    k: list[torch.Tensor | None]  # each (B, heads, M, dim_head); None: a layer without cross-attention
    v: list[torch.Tensor | None]
    mask: torch.Tensor  # (B, M) bool, True = attend
    memory: torch.Tensor | None = None  # (B, M, dim_audio) instead of k/v


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

    def caches(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The K and V caches (after `Decoder.setup_cache`)."""
        assert self.k_cache is not None and self.v_cache is not None, "setup_cache first"
        return self.k_cache, self.v_cache

    def _qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, D) -> rotated q (B, h, T, hd), rotated k and v (B, n_kv, T, hd)."""
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin, v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                input_pos: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        if input_pos is None:  # full forward, no cache
            mask = None
            causal = True
        else:  # write this step into the cache, attend over everything written so far
            k_cache, v_cache = self.caches()
            k_cache[:, :, input_pos] = k
            v_cache[:, :, input_pos] = v
            S = int(input_pos[-1]) + 1
            k, v = k_cache[:, :, :S], v_cache[:, :, :S]
            mask = input_pos[:, None] >= torch.arange(S, device=x.device)[None, :]  # (T, S)
            causal = False
        # grouped-query attention without materialising repeated K/V heads
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and T > 1,
                                             enable_gqa=self.n_head != self.n_kv)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))

    def forward_static(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D); cos/sin (B, 1, T, hd); caches (B, n_kv, S, hd); slots (T,) cache columns
        written by this call; mask (B, 1, T, S) True = attend. Fixed shapes, no host sync."""
        B, T, _ = x.shape
        q, k, v = self._qkv(x, cos, sin)
        k_cache.index_copy_(2, slots, k.to(k_cache.dtype))
        v_cache.index_copy_(2, slots, v.to(v_cache.dtype))
        out = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask,
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

    def forward_static(self, x, cos, sin, k_cache, v_cache, slots, mask):
        x = x + self.self_attn.forward_static(self.input_layernorm(x), cos, sin, k_cache, v_cache,
                                              slots, mask)
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

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None,
                mask: torch.Tensor) -> torch.Tensor:
        if v is None:  # `k` is the memory itself (CrossKV.memory)
            return self.attend_memory(x, k, mask)
        B, T, _ = x.shape
        q = self.to_q(self.norm(x)).view(B, T, self.heads, self.dim_head).transpose(1, 2)
        sim = torch.matmul(q * self.scale, k.transpose(-1, -2))  # (B, h, T, M)
        sim = sim.masked_fill(~mask[:, None, None, :], -torch.finfo(sim.dtype).max)
        sim = sim - sim.amax(dim=-1, keepdim=True)
        out = torch.matmul(sim.softmax(dim=-1), v)  # (B, h, T, dh)
        return self.to_out(out.transpose(1, 2).reshape(B, T, -1))


    def attend_memory(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The same attention without materialising K/V: q.k = (q W_k).m and
        softmax.(m W_v^T) = (softmax.m) W_v^T per head. Costs 2 x T x heads x M x dim_audio
        multiply-adds instead of M x dim_audio x 2 x inner for the K/V: cheaper while the
        query tokens T (all rows of a memory) x heads stay below 2 x inner / heads x heads
        (a scored prompt: 15-20 tokens x 8 heads against 1024). Equal up to float rounding."""
        B, T, _ = x.shape
        h, dh = self.heads, self.dim_head
        q = self.to_q(self.norm(x)).view(B, T, h, dh).transpose(1, 2)  # (B, h, T, dh)
        wk, wv = self.to_kv.weight.chunk(2, dim=0)  # each (inner, dim_audio)
        wk = wk.view(h, dh, -1)
        wv = wv.view(h, dh, -1)
        Bm, M, Da = memory.shape  # Bm = 1: one memory shared by all B rows
        qk = torch.matmul(q * self.scale, wk).reshape(Bm, -1, Da)  # (Bm, B/Bm*h*T, Da)
        # rows x heads x tokens as the rows of one product per memory: the memory is read as
        # is, never broadcast (copied) per head or row
        sim = torch.bmm(qk, memory.transpose(1, 2)).view(B, h, T, M)
        sim = sim.masked_fill(~mask[:, None, None, :], -torch.finfo(sim.dtype).max)
        sim = sim - sim.amax(dim=-1, keepdim=True)
        ctx = torch.bmm(sim.softmax(dim=-1).reshape(Bm, -1, M), memory).view(B, h, T, Da)
        out = torch.matmul(ctx, wv.transpose(-1, -2))  # (B, h, T, dh)
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

    def forward_static(self, h, cos, sin, k_cache, v_cache, slots, mask, xk, xv, xmask):
        if self.gated_cross_attn_layer_sound is not None:
            h = self.gated_cross_attn_layer_sound(h, xk, xv, xmask)
        return self.decoder_layer.forward_static(h, cos, sin, k_cache, v_cache, slots, mask)


class TokenEmbedding(nn.Module):
    """Token embedding table (also the tied output projection). No init: always loaded."""

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., vocab): the tied output projection."""
        return F.linear(h, self.weight)


class StaticCache:
    """Self-attention K/V of every layer for `batch` rows and `max_seq` positions, plus the
    RoPE table for those positions: allocated once, reused by every query of that shape."""

    def __init__(self, d: LMDims, batch: int, max_seq: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        shape = (batch, d.num_key_value_heads, max_seq, d.head_dim)
        self.batch, self.max_seq = batch, max_seq
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(d.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(d.num_hidden_layers)]
        self.cos, self.sin = rope_table(max_seq, d.head_dim, d.rope_theta, dtype, device)


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

    @property
    def blocks(self) -> Sequence[FlamingoLayer]:
        """`layers` as what they hold (to a type checker a ModuleList holds plain Modules)."""
        return cast("Sequence[FlamingoLayer]", self.layers)

    def cross_memory(self, memory: torch.Tensor, mask: torch.Tensor) -> CrossKV:
        """memory (B, M, dim_audio), mask (B, M) -> a `CrossKV` that attends through the
        projections (nothing computed now; see `CrossAttention.attend_memory`)."""
        n = len(self.layers)
        return CrossKV([None] * n, [None] * n, mask.bool(), memory)

    def cross_kv(self, memory: torch.Tensor, mask: torch.Tensor) -> CrossKV:
        """memory (B, M, dim_audio), mask (B, M) -> every layer's cross K/V, computed once."""
        ks, vs = [], []
        for layer in self.blocks:
            blk = layer.gated_cross_attn_layer_sound
            k, v = blk.attn.kv(memory) if blk is not None else (None, None)
            ks.append(k)
            vs.append(v)
        return CrossKV(ks, vs, mask.bool())

    def _cache_buffers(self, use: str, batch: int, max_seq: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every layer's (k, v) buffers for `use` ("prompt", "row", "options") and `batch` rows,
        at least `max_seq` long: allocated once (lengths rounded up to 64) and reused. Nothing
        is zeroed on reuse: a position is always written before anything reads it."""
        pool = self.__dict__.setdefault("_cache_pool", {})
        have = pool.get((use, batch))
        if (have is None or have[0][0].shape[2] < max_seq
                or have[0][0].is_inference() and not torch.is_inference_mode_enabled()):
            d = self.d
            p = self.norm.weight  # the model dtype (the embedding may be stored int8)
            shape = (batch, d.num_key_value_heads, -(-max_seq // 64) * 64, d.head_dim)
            have = [(torch.zeros(shape, dtype=p.dtype, device=p.device),
                     torch.zeros(shape, dtype=p.dtype, device=p.device)) for _ in self.layers]
            pool[(use, batch)] = have
        return have

    def setup_cache(self, batch: int, max_seq: int) -> None:
        for layer, (k, v) in zip(self.blocks, self._cache_buffers("prompt", batch, max_seq)):
            att = layer.decoder_layer.self_attn
            att.k_cache, att.v_cache = k, v

    def fork_cache(self, batch: int, row: int = 0,
                   source: list[tuple[torch.Tensor, torch.Tensor]] | None = None
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Make every self-attention cache `batch` copies of row `row` of `source` (default:
        the current caches): one prefilled prompt continued by several sequences (`AF2.score`
        teacher-forces all options this way). Returns the caches it replaced. The copies go
        into reused buffers: "row" ones when `source` is given (one row of a batched prefill),
        else "options" ones."""
        old = [ly.decoder_layer.self_attn.caches() for ly in self.blocks]
        src = source if source is not None else old
        n = src[0][0].shape[2]
        dst = self._cache_buffers("row" if source is not None else "options", batch, n)
        for layer, (k, v), (dk, dv) in zip(self.blocks, src, dst):
            att = layer.decoder_layer.self_attn
            dk[:, :, :n].copy_(k[row : row + 1].expand(batch, -1, -1, -1))
            dv[:, :, :n].copy_(v[row : row + 1].expand(batch, -1, -1, -1))
            att.k_cache, att.v_cache = dk, dv
        return old

    def forward(self, ids: torch.Tensor, xkv: CrossKV, input_pos: torch.Tensor | None = None,
                last_only: bool = False, select: torch.Tensor | None = None) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, V) in float32. `input_pos` (T,) selects the cached path;
        `last_only` projects only the last position onto the vocabulary (prefill); `select`
        (B,) projects only position select[b] of row b (prefill of right-padded prompts)."""
        h = self.embed_tokens(ids)
        pos = input_pos if input_pos is not None else torch.arange(ids.shape[1], device=ids.device)
        cos, sin = rope_cos_sin(pos, self.d.head_dim, self.d.rope_theta, h.dtype)
        for i, layer in enumerate(self.blocks):
            if xkv.memory is not None:  # K/V folded into the queries: v=None tells the block
                h = layer(h, cos, sin, input_pos, xkv.memory, None, xkv.mask)
            else:
                h = layer(h, cos, sin, input_pos, xkv.k[i], xkv.v[i], xkv.mask)
        if select is not None:
            h = h[torch.arange(h.shape[0], device=h.device), select][:, None]
        h = self.norm(h[:, -1:] if last_only else h)
        return self.output(h)

    def output(self, h: torch.Tensor) -> torch.Tensor:
        """Final hidden states -> float32 logits (tied embedding or lm_head)."""
        out = self.embed_tokens.project(h) if self.lm_head is None else self.lm_head(h)
        return out.float()

    def forward_static(self, ids: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor,
                       mask: torch.Tensor, cache: StaticCache, xk: list, xv: list,
                       xmask: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """The fixed-shape cached forward.

        ids (B, T) tokens; pos (B, T) their RoPE positions (a left-padded row starts at 0 on its
        first real token); slots (T,) the cache columns they are written to; mask (B, 1, T, S)
        which cache columns each query attends; xk/xv per layer (Bm, heads, M, dim_head) with
        Bm in {1, B} and xmask (Bm, M) their key mask. -> logits (B, T or 1, V) float32."""
        h = self.embed_tokens(ids)
        cos = cache.cos[pos].unsqueeze(1)  # (B, 1, T, hd)
        sin = cache.sin[pos].unsqueeze(1)
        for i, layer in enumerate(self.blocks):
            h = layer.forward_static(h, cos, sin, cache.k[i], cache.v[i], slots, mask,
                                     xk[i], xv[i], xmask)
        h = self.norm(h[:, -1:] if last_only else h)
        return self.output(h)
