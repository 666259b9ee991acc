"""Decoding: the options object, token picking on the device, and the static batched loop.

    s = Sampling(max_new_tokens=64)                       # greedy
    s = Sampling(max_new_tokens=64, greedy=False, top_k=30, top_p=0.95, seed=7)

`StaticDecoder` owns the fixed buffers of one (batch, max length, memory capacity) shape: the
self-attention cache, token/position/slot inputs, cross K/V padded to the capacity with a key
mask. `prefill` runs the prompt eagerly; `step` runs one token for every row, either eagerly or
by replaying a CUDA graph captured for that shape (`graphs=True`; a failed capture is logged once
and the eager step is used). `decode` is the loop: one host sync per token (the EOS check), the
generated ids copied to the host once at the end.

Rows of a batch are independent: prompts are left-padded (a row's RoPE positions start at 0 on
its first real token, pad columns are masked out of every real query), memories of different
lengths are padded to the longest with their key mask, so a row's ids equal what it decodes
alone (exactly in float32 on the fixture and on random weights; tests/edge/model/test_static_decode.py).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
import torch

from .decoder import CrossKV, Decoder, StaticCache
from .progress import tick

log = structlog.get_logger(__name__)

SEQ_BUCKET = 64  # cache lengths are rounded up to this: fewer shapes, fewer graph captures


@dataclass(frozen=True)
class Sampling:
    """How one query decodes. Frozen (hashable): queries with equal options can share a batch."""

    max_new_tokens: int = 64
    greedy: bool = True
    top_k: int | None = None
    top_p: float | None = None
    temperature: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError("top_k must be >= 1")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")

    def generators(self, n: int, device: torch.device) -> list[torch.Generator] | None:
        """One generator per row, each seeded as if the row were decoded alone."""
        if self.greedy:
            return None
        gens = []
        for _ in range(n):
            g = torch.Generator(device=device)
            if self.seed is not None:
                g.manual_seed(self.seed)
            else:
                g.seed()  # fresh entropy, without reseeding the global RNG
            gens.append(g)
        return gens


def pick_tokens(logits: torch.Tensor, s: Sampling,
                gens: Sequence[torch.Generator | None] | None) -> torch.Tensor:
    """logits (B, V) -> next ids (B,) on the same device, without a host sync.

    Greedy argmax, or temperature -> top-k -> top-p -> multinomial (the HF warper order), each
    row drawing from its own generator."""
    if s.greedy:
        return torch.argmax(logits, dim=-1)
    x = logits.float() / s.temperature
    if s.top_k is not None and s.top_k > 0:
        kth = torch.topk(x, min(s.top_k, x.shape[-1]), dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if s.top_p is not None and s.top_p < 1.0:
        sorted_x, idx = torch.sort(x, dim=-1, descending=False)
        cum = sorted_x.softmax(-1).cumsum(-1)
        remove = cum <= (1 - s.top_p)
        remove[:, -1] = False  # keep at least the most likely token
        x = x.masked_fill(remove.scatter(-1, idx, remove), float("-inf"))
    probs = x.softmax(-1)
    assert gens is not None and len(gens) == probs.shape[0]
    return torch.cat([torch.multinomial(probs[b], 1, generator=g) for b, g in enumerate(gens)])


def pick_token(logits: torch.Tensor, s: Sampling, gen: torch.Generator | None) -> int:
    """One row: logits (V,) -> id (syncs; the eager reference loop uses it)."""
    return int(pick_tokens(logits[None], s, None if s.greedy else [gen])[0])


def _bucket(n: int) -> int:
    return -(-n // SEQ_BUCKET) * SEQ_BUCKET


class StaticDecoder:
    """Fixed buffers for `batch` rows, `max_seq` cache columns and `mem_cap` memory tokens.

    `shared_memory`: every row reads the same cross K/V (questions about one memory): the
    buffers have batch 1 and broadcast, so the K/V are read once per step for all rows."""

    def __init__(self, decoder: Decoder, batch: int, max_seq: int, mem_cap: int,
                 shared_memory: bool, graphs: bool = False, cache: StaticCache | None = None) -> None:
        p = decoder.norm.weight
        self.dec, self.device, self.dtype = decoder, p.device, p.dtype
        self.batch, self.max_seq, self.mem_cap = batch, max_seq, mem_cap
        self.shared_memory = shared_memory
        # the self-attention cache may be shared with decoders of other memory capacities
        # (`DecoderPool`): every query rewrites the positions it reads, starting at prefill
        self.cache = cache or StaticCache(decoder.d, batch, max_seq, self.dtype, self.device)
        dev = self.device
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.pos = torch.zeros(batch, 1, dtype=torch.long, device=dev)
        self.slot = torch.zeros(1, dtype=torch.long, device=dev)
        self.columns = torch.arange(max_seq, device=dev)
        self.key_ok = torch.zeros(batch, max_seq, dtype=torch.bool, device=dev)
        self.bm = 1 if shared_memory else batch
        n = len(decoder.layers)
        self.xk: list[torch.Tensor | None] = [None] * n  # (Bm, heads, mem_cap, dim_head)
        self.xv: list[torch.Tensor | None] = [None] * n
        self.xmask = torch.zeros(self.bm, mem_cap, dtype=torch.bool, device=dev)
        self._own_cross = False  # buffers allocated (else aliased to a CrossKV's tensors)
        self.logits: torch.Tensor | None = None  # the graph's output buffer
        self.want_graph = graphs
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_error: str | None = None

    # ---- inputs ---------------------------------------------------------------------------
    def set_cross(self, xkvs: list[CrossKV]) -> None:
        """Put each row's cross K/V into the fixed buffers (zero-padded, key mask False).

        Without graphs, one shared memory that fills the capacity is used in place (no copy)."""
        rows = xkvs[:1] if self.shared_memory else xkvs
        M0 = rows[0].mask.shape[-1]
        if not self.want_graph and len(rows) == 1 and M0 == self.mem_cap:
            self.xk, self.xv = list(rows[0].k), list(rows[0].v)
            self.xmask = rows[0].mask.bool()
            self._own_cross = False
            return
        if not self._own_cross:
            self._alloc_cross()
        self.xmask.zero_()
        for r, xkv in enumerate(rows):
            M = xkv.mask.shape[-1]
            if M > self.mem_cap:
                raise ValueError(f"memory of {M} tokens exceeds the decoder's capacity {self.mem_cap}")
            self.xmask[r, :M] = xkv.mask[0]
            for i, (k, v) in enumerate(zip(self.xk, self.xv)):
                if k is not None and v is not None:
                    xk, xv = xkv.k[i], xkv.v[i]
                    assert xk is not None and xv is not None  # the same layers attend across
                    k[r, :, :M] = xk[0]
                    v[r, :, :M] = xv[0]
                    # beyond M: masked keys; zeros keep them finite (0 weight x finite = 0)
                    k[r, :, M:] = 0
                    v[r, :, M:] = 0

    def _alloc_cross(self) -> None:
        dev = self.device
        for i, layer in enumerate(self.dec.blocks):
            blk = layer.gated_cross_attn_layer_sound
            if blk is not None:
                shape = (self.bm, blk.attn.heads, self.mem_cap, blk.attn.dim_head)
                self.xk[i] = torch.zeros(shape, dtype=self.dtype, device=dev)
                self.xv[i] = torch.zeros(shape, dtype=self.dtype, device=dev)
        self.xmask = torch.zeros(self.bm, self.mem_cap, dtype=torch.bool, device=dev)
        self._own_cross = True

    # ---- forward passes -------------------------------------------------------------------
    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Left-pad the prompts, write them into the cache -> last-position logits (B, V)."""
        B, dev = self.batch, self.device
        if len(prompts) != B:
            raise ValueError(f"expected {B} prompts, got {len(prompts)}")
        T = max(len(p) for p in prompts)
        if T + 1 > self.max_seq:
            raise ValueError(f"prompt of {T} tokens does not fit a cache of {self.max_seq}")
        pad = torch.tensor([T - len(p) for p in prompts], device=dev)
        ids = torch.tensor([[0] * (T - len(p)) + list(p) for p in prompts], device=dev)
        t = torch.arange(T, device=dev)
        pos = (t[None, :] - pad[:, None]).clamp(min=0)  # (B, T)
        self.key_ok.copy_(self.columns[None, :] >= pad[:, None])
        causal = self.columns[None, :] <= t[:, None]  # (T, S)
        # a pad query attends to its own column only (it is never attended, but must not be NaN)
        mask = (self.key_ok[:, None, :] & causal[None]) | (self.columns[None, :] == t[:, None])[None]
        logits = self.dec.forward_static(ids, pos, t, mask[:, None], self.cache, self.xk, self.xv,
                                         self.xmask, last_only=True)[:, -1]
        self.pos.copy_(torch.tensor([[len(p)] for p in prompts], device=dev))
        self.slot.fill_(T)
        return logits

    def _step(self) -> torch.Tensor:
        """One token per row from the fixed inputs. Device ops only (graph-capturable)."""
        mask = (self.key_ok & (self.columns <= self.slot))[:, None, None, :]  # (B, 1, 1, S)
        return self.dec.forward_static(self.ids, self.pos, self.slot, mask, self.cache, self.xk,
                                       self.xv, self.xmask)[:, -1]

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed `tokens` (B,) at the current slot -> logits (B, V); advances the slot."""
        self.ids.copy_(tokens.view(-1, 1))
        if self.want_graph and self.graph is None and self.graph_error is None:
            self._capture()
        if self.graph is not None:
            self.graph.replay()
            out = self.logits
            assert out is not None  # the captured graph's output buffer
        else:
            out = self._step()
        self.pos.add_(1)
        self.slot.add_(1)
        return out

    def _capture(self) -> None:
        """Capture `_step` in a CUDA graph (warm-up on a side stream first, as the CUDA graph
        docs require). Any failure: log one line and keep the eager step."""
        try:
            if self.device.type != "cuda":
                raise RuntimeError(f"CUDA graphs need a CUDA device, not {self.device.type}")
            s = torch.cuda.Stream(self.device)
            s.wait_stream(torch.cuda.current_stream(self.device))
            # warm-up writes this slot's K/V with this step's inputs; replay rewrites the same
            with torch.cuda.stream(s):
                for _ in range(2):
                    self._step()
            torch.cuda.current_stream(self.device).wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                self.logits = self._step()
            self.graph = g
            log.info("decode step captured in a CUDA graph", batch=self.batch, cache=self.max_seq,
                     memory=self.mem_cap)
        except Exception as e:  # noqa: BLE001 - any capture failure falls back, logged once
            self.graph, self.logits = None, None
            self.graph_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log.warning("CUDA graph capture failed, decoding eagerly", error=self.graph_error)


@dataclass
class Decoded:
    token_ids: list[int]
    finished: bool
    timings: dict[str, float] = field(default_factory=dict)


class DecoderPool:
    """The `StaticDecoder`s of one model, keyed by shape (least recently used dropped first)."""

    def __init__(self, decoder: Decoder, graphs: bool, max_entries: int = 4,
                 mem_cap: int | None = None) -> None:
        self.decoder, self.graphs, self.max_entries = decoder, graphs, max_entries
        self.mem_cap = mem_cap  # fixed memory capacity (graphs: one capture per batch size)
        self.entries: OrderedDict[tuple, StaticDecoder] = OrderedDict()
        # self-attention caches by (batch, max_seq): shared by the decoders of every memory
        # capacity (on the CPU the capacity follows the memory, which grows as a stream starts)
        self.caches: dict[tuple[int, int], StaticCache] = {}

    def get(self, batch: int, max_seq: int, mem: int, shared: bool) -> StaticDecoder:
        cap = max(self.mem_cap or 0, mem)
        key = (batch, _bucket(max_seq), cap, shared)
        sd = self.entries.pop(key, None)
        if sd is None:
            while len(self.entries) >= self.max_entries:
                _, old = self.entries.popitem(last=False)
                if all(e.cache is not old.cache for e in self.entries.values()):
                    self.caches = {k: c for k, c in self.caches.items() if c is not old.cache}
            cache = self.caches.get((batch, key[1]))
            if cache is None:
                p = self.decoder.norm.weight
                cache = StaticCache(self.decoder.d, batch, key[1], p.dtype, p.device)
                self.caches[(batch, key[1])] = cache
            sd = StaticDecoder(self.decoder, batch, key[1], cap, shared, self.graphs, cache)
        self.entries[key] = sd
        return sd


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def decode(pool: DecoderPool, prompts: list[list[int]], xkvs: list[CrossKV], s: Sampling,
           eos: int, limits: list[int] | None = None) -> list[Decoded]:
    """Decode every prompt against its own cross K/V (the same object = a shared memory), as one
    batch. `limits`: each row's own max_new_tokens (default `s.max_new_tokens` for all): a row
    stops counting at its limit (rows are independent, so its ids are those it gets alone with
    that limit) and the batch runs until every row is done.
    -> per row: ids up to (excluding) EOS, whether EOS ended it, timings."""
    B = len(prompts)
    if B == 0:
        return []
    if len(xkvs) != B:
        raise ValueError("one CrossKV per prompt")
    if limits is not None and (len(limits) != B or min(limits) < 1):
        raise ValueError("one max_new_tokens >= 1 per prompt")
    shared = all(x is xkvs[0] for x in xkvs)
    T = max(len(p) for p in prompts)
    n_new = max(limits) if limits is not None else s.max_new_tokens
    sd = pool.get(B, T + n_new, max(x.mask.shape[-1] for x in xkvs), shared)
    dev = sd.device
    t0 = time.perf_counter()
    sd.set_cross(xkvs)
    logits = sd.prefill(prompts)
    _sync(dev)
    t_prefill = time.perf_counter() - t0
    gens = s.generators(B, dev)
    out = torch.empty(B, n_new, dtype=torch.long, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    row_limit = torch.tensor(limits, device=dev) if limits is not None else None
    n = steps = 0
    for i in range(n_new):
        tok = pick_tokens(logits, s, gens)
        out[:, i] = tok
        done |= tok == eos
        if row_limit is not None:
            done |= row_limit <= i + 1
        n = i + 1
        if i == n_new - 1 or bool(done.all()):  # the one host sync per token
            break
        tick()  # a watchdog sees a long generation turn (edge.model.progress)
        logits = sd.step(tok)
        steps += 1
    rows = out[:, :n].tolist()  # one copy to the host
    t_total = time.perf_counter() - t0
    decode_s = t_total - t_prefill
    timings = {"prefill_s": t_prefill, "decode_s": decode_s,
               "tokens_per_s": (steps / decode_s) if steps > 0 and decode_s > 0 else 0.0,
               "batch": float(B), "cuda_graph": float(sd.graph is not None)}
    result = []
    for b, r in enumerate(rows):
        if limits is not None:
            r = r[: limits[b]]
        if eos in r:
            result.append(Decoded(r[: r.index(eos)], True, dict(timings)))
        else:
            result.append(Decoded(r, False, dict(timings)))
    return result
