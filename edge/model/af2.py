"""`AF2`: the public face of the model runtime.

    m = AF2.load(model_dir, dtype=torch.float32, device="cpu")
    clips, mask = m.prepare_file(path, max_windows=30)   # (L, 160000), (L,)
    tokens = m.encode(clips)                             # (L, 64, D), batch-invariant
    memory = m.memory(tokens, mask)                      # (L*64, D)
    logits = m.logits(memory, mask, input_ids)           # (T, V), full forward, no cache
    ans = m.ask(memory, mask, "is the compressor knocking?", Sampling(max_new_tokens=64))
    s = m.score(memory, mask, "is the compressor knocking?", options=["yes", "no"])
    s.probs["yes"]                                       # one forward pass, no generation

A query computes the cross-attention K/V of every decoder layer once (`cross_kv`) and decodes
on the static path (edge/model/generate.py): fixed buffers per (batch, max length), several
questions as one batch. `ask_many` shares one K/V set between questions about one memory;
`ask_batch` decodes questions about different memories (streams) together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import audio as audio_prep
from .config import CLIP_SAMPLES, TOKENS_PER_CLIP, AF2Config
from edge.constants import MAX_CLIPS
from .decoder import CrossKV
from .generate import DecoderPool, Sampling, decode, pick_token
from .modules import AF2Modules, release_name
from .progress import tick
from .tokenizer import AF2Tokenizer


@dataclass
class Answer:
    text: str  # the answer only (after <SEP>, special tokens removed)
    token_ids: list[int]  # generated ids, EOS excluded
    prompt_ids: list[int]
    finished: bool  # True if EOS ended the answer, False if max_new_tokens did
    timings: dict[str, float] = field(default_factory=dict)


__all__ = ["AF2", "AF2Modules", "Answer", "Sampling", "Scores", "pick_token"]

MAX_MEMORY_TOKENS = MAX_CLIPS * TOKENS_PER_CLIP  # 5 minutes: the static cross K/V capacity with graphs


@dataclass
class Scores:
    """How likely the model finds each of a fixed set of answers to one question.

    `logprobs[o]` is the sum over the option's tokens of log P(token | prompt, earlier option
    tokens), teacher-forced right after <SEP> (no EOS); `probs` is their softmax over the options
    (the model's preference *among* the options); `coverage` is the probability the answer starts
    with the first token of one of the options at all (low = the model would say something else).
    """

    options: list[str]
    logprobs: dict[str, float]
    probs: dict[str, float]
    coverage: float
    token_ids: dict[str, list[int]]  # each option's tokens
    prompt_ids: list[int]
    timings: dict[str, float] = field(default_factory=dict)


def stack_cross(xkvs: list[CrossKV]) -> CrossKV:
    """One `CrossKV` for a batch whose row b reads `xkvs[b]` (each of batch 1): the shared
    object itself when every row reads one memory (it broadcasts), else every layer's K/V
    zero-padded to the longest memory, the padding masked out (a masked key gets weight
    exactly 0, so a row's attention equals its memory's alone up to summation order)."""
    if all(x is xkvs[0] for x in xkvs):
        return xkvs[0]
    B, M = len(xkvs), max(x.mask.shape[-1] for x in xkvs)
    first = xkvs[0]
    mask = torch.zeros((B, M), dtype=torch.bool, device=first.mask.device)
    if first.memory is not None:  # memories whose K/V are folded into the queries
        mem = first.memory.new_zeros((B, M, first.memory.shape[-1]))
        for b, x in enumerate(xkvs):
            assert x.memory is not None
            mem[b, : x.mask.shape[-1]] = x.memory[0]
            mask[b, : x.mask.shape[-1]] = x.mask[0]
        return CrossKV([None] * len(first.k), [None] * len(first.k), mask, mem)
    ks: list[torch.Tensor | None] = []
    vs: list[torch.Tensor | None] = []
    for i, k0 in enumerate(first.k):
        if k0 is None:
            ks.append(None)
            vs.append(None)
            continue
        k = k0.new_zeros((B, k0.shape[1], M, k0.shape[3]))
        v = k0.new_zeros((B, k0.shape[1], M, k0.shape[3]))
        for b, x in enumerate(xkvs):
            n = x.mask.shape[-1]
            xk, xv = x.k[i], x.v[i]
            assert xk is not None and xv is not None  # the same layers hold cross-attention
            k[b, :, :n] = xk[0]
            v[b, :, :n] = xv[0]
        ks.append(k)
        vs.append(v)
    for b, x in enumerate(xkvs):
        mask[b, : x.mask.shape[-1]] = x.mask[0]
    return CrossKV(ks, vs, mask)


class AF2:
    def __init__(self, modules: AF2Modules, tokenizer: AF2Tokenizer | None, config: AF2Config,
                 dtype: torch.dtype, device: torch.device, model_id: str | None = None) -> None:
        self.modules = modules.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.config = config
        self.dtype = dtype
        self.device = device
        self.model_id = model_id or f"af2-{release_name(config)}"
        self.max_batch = 8  # rows per decoding batch; larger groups run in chunks
        self.quantize = "none"  # decoder weights: none | int8 | int4 (edge/model/quant.py)
        self.encoder_dtype: str | None = None  # the encoder backend's default (edge.daemon sets it)
        self.set_graphs(device.type == "cuda")

    def set_graphs(self, enabled: bool) -> None:
        """CUDA graphs for the one-token step (default on CUDA). With graphs the cross K/V
        buffers have the fixed 5-minute capacity, so one capture serves every memory length."""
        self.graphs = enabled
        self._pool = DecoderPool(self.modules.decoder, graphs=enabled,
                                 mem_cap=MAX_MEMORY_TOKENS if enabled else None)

    # ---- construction ----------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: str | Path, dtype: torch.dtype | str = torch.float32,
             device: str | torch.device = "cpu", encoder_only: bool = False,
             quantize: str = "none", verify: str = "full",
             progress: Callable[[int, int], None] | None = None) -> AF2:
        """Load an official or compact checkpoint. `encoder_only` loads just the AF-CLAP
        encoder (`encode` works; `memory`/`ask` need the full model). `quantize` int8/int4:
        weight-only quantization of the decoder, applied while the tensors stream in.
        `verify` quick/full and `progress(done, total)`: edge/model/checkpoint.py."""
        from .checkpoint import load_model

        p = load_model(model_dir, dtype=dtype, device=device, encoder_only=encoder_only,
                       quantize=quantize, verify=verify, progress=progress)
        m = cls(p.modules, p.tokenizer, p.config, p.dtype, p.device, p.model_id)
        m.quantize = p.quantize
        return m

    @classmethod
    def random(cls, config: AF2Config, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", seed: int = 0,
               tokenizer: AF2Tokenizer | None = None, quantize: str = "none") -> AF2:
        """Random weights at any dims (benchmarks). Built directly in `dtype`; `quantize`
        then quantizes the decoder in place, one weight at a time."""
        torch.manual_seed(seed)
        with torch.device("meta"):
            mods = AF2Modules(config)
        mods = mods.to(dtype).to_empty(device=device)
        mods.init_buffers()
        with torch.no_grad():
            for name, p in mods.named_parameters():
                if name.endswith("_gate"):
                    p.fill_(0.5)  # open the cross-attention gates so the audio matters
                elif p.ndim == 1:  # norm scales -> 1, biases -> 0
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                else:
                    p.normal_(0.0, 0.02)
            for name, b in mods.named_buffers():
                if name.endswith("running_var"):
                    b.fill_(1.0)
                elif name.endswith(("running_mean", "num_batches_tracked")):
                    b.zero_()
        if quantize != "none":
            from .quant import quantize_model

            quantize_model(mods.decoder, quantize)
        m = cls(mods, tokenizer, config, dtype, torch.device(device),
                f"af2-random-{release_name(config)}")
        m.quantize = quantize
        return m

    # ---- audio ------------------------------------------------------------------------
    @staticmethod
    def prepare_file(path: str | Path, max_windows: int = MAX_CLIPS) -> tuple[torch.Tensor, torch.Tensor]:
        """Official file preparation: -> clips (L, 160000) float32, window mask (L,)."""
        return audio_prep.prepare_file(path, max_windows)

    @torch.inference_mode()
    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """(L, 160000) clips -> (L, 64, D) AF-CLAP tokens in the model dtype.

        Each clip runs its own forward pass, so a clip's tokens are bit-identical whether it is
        encoded alone or with others (BLAS kernels are not batch-invariant; streaming relies on
        this). Batched execution is the job of the ONNX Runtime / TensorRT backends.
        """
        if clips.ndim != 2 or clips.shape[1] != CLIP_SAMPLES:
            raise ValueError(f"encode expects clips of shape (L, 160000), got {tuple(clips.shape)}")
        x = audio_prep.int16_roundtrip_torch(clips.to(self.device, torch.float32))
        out = []
        for i in range(x.shape[0]):
            out.append(self.modules.encoder(x[i : i + 1]))
            tick()
        return torch.cat(out)

    @torch.inference_mode()
    def memory(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(L, 64, D) tokens + (L,) window mask -> (L*64, D) cross-attention memory."""
        L, n, D = tokens.shape
        key_mask = self._token_mask(mask, L)
        x = tokens.to(self.device, self.dtype).reshape(1, L * n, D)
        # ticks once per layer (a query turn builds several streams' memories before its
        # first token, each up to 30 windows)
        out = self.modules.audio_transformer(x, key_mask[None])[0]
        return out

    def _token_mask(self, mask: torch.Tensor, L: int) -> torch.Tensor:
        mask = torch.as_tensor(mask, device=self.device)
        if mask.shape != (L,):
            raise ValueError(f"window mask must have shape ({L},), got {tuple(mask.shape)}")
        return mask.repeat_interleave(TOKENS_PER_CLIP)

    # ---- decoder ----------------------------------------------------------------------
    @torch.inference_mode()
    def cross_kv(self, memory: torch.Tensor, mask: torch.Tensor) -> CrossKV:
        """Every decoder layer's cross-attention K/V for this memory: computed once per query."""
        L = memory.shape[0] // TOKENS_PER_CLIP
        key_mask = self._token_mask(mask, L) != 0
        kv = self.modules.decoder.cross_kv(memory.to(self.device, self.dtype)[None], key_mask[None])
        tick()
        return kv

    @torch.inference_mode()
    def cross_memory(self, memory: torch.Tensor, mask: torch.Tensor) -> CrossKV:
        """A `CrossKV` for scoring that never materialises the K/V: every layer attends
        through its projections (`decoder.CrossAttention.attend_memory`). For a few scored
        questions about a memory this is about 4x cheaper than `cross_kv` (a 15-token prompt:
        2 x 15 x 8 heads against 1024 projected channels per memory token); `score*` accept
        it wherever they accept `cross_kv`'s (the static decoding path does not)."""
        L = memory.shape[0] // TOKENS_PER_CLIP
        key_mask = self._token_mask(mask, L) != 0
        return self.modules.decoder.cross_memory(memory.to(self.device, self.dtype)[None], key_mask[None])

    @torch.inference_mode()
    def logits(self, memory: torch.Tensor, mask: torch.Tensor, input_ids) -> torch.Tensor:
        """Teacher-forced logits (T, V) over `input_ids`, float32, full forward without caches."""
        ids = torch.as_tensor(input_ids, device=self.device).reshape(1, -1)
        return self.modules.decoder(ids, self.cross_kv(memory, mask))[0]

    def score(self, memory: torch.Tensor, mask: torch.Tensor, question: str,
              options: list[str], xkv: CrossKV | None = None) -> Scores:
        """Teacher-forced log-probabilities of `options` as answers to `question`.

        The prompt is exactly `ask`'s; each option is tokenised without special tokens and
        follows <SEP> directly. Cost: one prefill of the prompt, then (only if some option has
        more than one token) one batched forward of the multi-token options continuing from the
        prompt's KV cache. Pass `xkv` (from `cross_kv`) to share it with other queries.
        """
        if self.tokenizer is None:
            raise RuntimeError("this AF2 instance has no tokenizer (built with AF2.random?)")
        options = list(options)
        if not options:
            raise ValueError("score needs at least one option")
        if len(set(options)) != len(options):
            raise ValueError(f"score options must be distinct, got {options!r}")
        option_ids = [self.tokenizer.encode_text(o) for o in options]
        for o, ids in zip(options, option_ids):
            if not ids:
                raise ValueError(f"option {o!r} has no tokens")
        prompt = self.tokenizer.encode_prompt(question)
        t0 = time.perf_counter()
        if xkv is None:
            xkv = self.cross_kv(memory, mask)
        t_kv = time.perf_counter() - t0
        lp, coverage, timings = self.score_ids(prompt, option_ids, xkv)
        timings["cross_kv_s"] = t_kv
        logprobs = {o: float(v) for o, v in zip(options, lp.tolist())}
        probs = {o: float(v) for o, v in zip(options, lp.softmax(0).tolist())}
        return Scores(options, logprobs, probs, coverage,
                      {o: list(ids) for o, ids in zip(options, option_ids)}, prompt, timings)

    @torch.inference_mode()
    def score_ids(self, prompt_ids: list[int], option_ids: list[list[int]], xkv: CrossKV
                  ) -> tuple[torch.Tensor, float, dict[str, float]]:
        """-> (log-probabilities (N,) float64, coverage, timings) of token sequences after a prompt."""
        dec = self.modules.decoder
        T = len(prompt_ids)
        t0 = time.perf_counter()
        dec.setup_cache(1, T + max(len(o) for o in option_ids) - 1)
        prompt = torch.tensor([prompt_ids], device=self.device)
        first = dec(prompt, xkv, input_pos=torch.arange(T, device=self.device), last_only=True)[0, -1]
        t_prefill = time.perf_counter() - t0
        lp, coverage = self._options_after_prefill(first, option_ids, xkv, T)
        t_total = time.perf_counter() - t0
        return lp, coverage, {"prefill_s": t_prefill, "options_s": t_total - t_prefill}

    def score_batch(self, memory: torch.Tensor, mask: torch.Tensor,
                    queries: list[tuple[str, list[str]]], xkv: CrossKV | None = None) -> list[Scores]:
        """`score` for several (question, options) about one memory: the prompts prefill as
        one batch (right-padded; causal attention keeps padding out of every real position),
        sharing one cross K/V. Equal to `score` one at a time up to float rounding."""
        t0 = time.perf_counter()
        if xkv is None:
            xkv = self.cross_kv(memory, mask)
        t_kv = time.perf_counter() - t0
        out = self.score_batch_kv([(xkv, q, o) for q, o in queries])
        for s in out:
            s.timings["cross_kv_s"] = t_kv
        return out

    def score_batch_kv(self, queries: list[tuple[CrossKV, str, list[str]]]) -> list[Scores]:
        """(cross K/V, question, options) each about its own memory (pass the same `CrossKV`
        object for questions about one memory; e.g. several streams' monitors due at once):
        the prompts prefill together in batches of at most `max_batch` rows (memories of
        different lengths padded and masked, prompts right-padded). Each result equals `score`
        alone up to float rounding (1e-5 in float32)."""
        if self.tokenizer is None:
            raise RuntimeError("this AF2 instance has no tokenizer (built with AF2.random?)")
        prompts, option_ids = [], []
        for _, question, options in queries:
            options = list(options)
            if not options or len(set(options)) != len(options):
                raise ValueError(f"score options must be distinct and not empty, got {options!r}")
            ids = [self.tokenizer.encode_text(o) for o in options]
            for o, i in zip(options, ids):
                if not i:
                    raise ValueError(f"option {o!r} has no tokens")
            prompts.append(self.tokenizer.encode_prompt(question))
            option_ids.append(ids)
        results: list[tuple[torch.Tensor, float]] = []
        for c in range(0, len(queries), self.max_batch):
            rows = [(queries[i][0], prompts[i], option_ids[i])
                    for i in range(c, min(c + self.max_batch, len(queries)))]
            results += self.score_ids_rows(rows)
        out = []
        for (_, _question, options), prompt, ids, (lp, cov) in zip(queries, prompts, option_ids, results):
            out.append(Scores(list(options), {o: float(v) for o, v in zip(options, lp.tolist())},
                              {o: float(v) for o, v in zip(options, lp.softmax(0).tolist())}, cov,
                              {o: list(i) for o, i in zip(options, ids)}, prompt,
                              {"batch": min(len(queries), self.max_batch)}))
        return out

    @torch.inference_mode()
    def score_ids_batch(self, prompts: list[list[int]], option_ids: list[list[list[int]]],
                        xkv: CrossKV) -> list[tuple[torch.Tensor, float]]:
        """Several prompts about one memory (`xkv` of batch 1) -> [(log-probabilities, coverage)]."""
        return self.score_ids_rows([(xkv, p, o) for p, o in zip(prompts, option_ids)])

    @torch.inference_mode()
    def score_ids_rows(self, rows: list[tuple[CrossKV, list[int], list[list[int]]]]
                       ) -> list[tuple[torch.Tensor, float]]:
        """(cross K/V of batch 1, prompt ids, option ids) per row, as one batched prefill:
        prompts right-padded (causal attention keeps padding out of every real position);
        rows about one memory (the same `CrossKV` object) share its K/V, different memories
        are padded to the longest with their key masks. -> [(log-probabilities, coverage)]."""
        dec = self.modules.decoder
        dev = self.device
        B = len(rows)
        prompts = [p for _, p, _ in rows]
        lens = [len(p) for p in prompts]
        T = max(lens)
        longest = max(len(o) for _, _, opts in rows for o in opts)
        dec.setup_cache(B, T + longest - 1)
        ids = torch.zeros((B, T), dtype=torch.long, device=dev)
        for b, p in enumerate(prompts):
            ids[b, : len(p)] = torch.tensor(p)
        last = torch.tensor([n - 1 for n in lens], device=dev)
        row_kvs = [x for x, _, _ in rows]
        if len({x.memory is None for x in row_kvs}) > 1:  # mixed: materialise the folded ones
            made: dict[int, CrossKV] = {}
            for x in row_kvs:
                if x.memory is not None and id(x) not in made:
                    made[id(x)] = dec.cross_kv(x.memory, x.mask)
            row_kvs = [made.get(id(x), x) for x in row_kvs]
        xkv = stack_cross(row_kvs)
        first = dec(ids, xkv, input_pos=torch.arange(T, device=dev), select=last)[:, 0]  # (B, V)
        del xkv  # the padded copy (several memories) is not needed for the options
        caches = [ly.decoder_layer.self_attn.caches() for ly in dec.blocks]
        out = []
        for b, (row_xkv, _, opts) in enumerate(rows):
            if any(len(o) > 1 for o in opts):
                # the row's cache beyond its prompt holds padding: the options overwrite it
                # position by position before anything reads it
                dec.fork_cache(1, b, caches)
            out.append(self._options_after_prefill(first[b], opts, row_xkv, lens[b]))
            tick()
        return out

    @torch.inference_mode()
    def score_many(self, items: list[tuple[torch.Tensor, torch.Tensor, list[int], list[list[int]]]],
                   max_batch: int = 8) -> list[tuple[torch.Tensor, float]]:
        """Score several (memory, mask, prompt_ids, option_ids) at once: items whose prompts
        have the same length prefill as one batch (memories of different lengths padded and
        masked; their cross K/V computed as one batch), at most `max_batch` rows at a time (each
        row holds its memory's cross K/V). Multi-token options then continue per item.
        -> [(log-probabilities (N,) float64, coverage)] in the order of `items`; equal to
        `score_ids` one at a time up to float rounding."""
        out: list[tuple[torch.Tensor, float] | None] = [None] * len(items)
        by_len: dict[int, list[int]] = {}
        for i, (_, _, prompt, _) in enumerate(items):
            by_len.setdefault(len(prompt), []).append(i)
        for T, idx in by_len.items():
            for c in range(0, len(idx), max_batch):
                chunk = idx[c : c + max_batch]
                for i, r in zip(chunk, self._score_batch([items[i] for i in chunk], T)):
                    out[i] = r
        return [r for r in out if r is not None]

    def _score_batch(self, items, T: int) -> list[tuple[torch.Tensor, float]]:
        dec = self.modules.decoder
        dev = self.device
        B = len(items)
        lens = [m.shape[0] for m, _, _, _ in items]
        M = max(lens)
        memory = torch.zeros((B, M, items[0][0].shape[-1]), dtype=self.dtype, device=dev)
        key_mask = torch.zeros((B, M), dtype=torch.bool, device=dev)
        for b, (mem, mask, _, _) in enumerate(items):
            memory[b, : mem.shape[0]] = mem.to(dev, self.dtype)
            key_mask[b, : mem.shape[0]] = self._token_mask(mask, mem.shape[0] // TOKENS_PER_CLIP) != 0
        xkv = dec.cross_kv(memory, key_mask)  # (B, heads, M, dh) per layer
        longest = max(len(o) for _, _, _, opts in items for o in opts)
        dec.setup_cache(B, T + longest - 1)
        prompts = torch.tensor([p for _, _, p, _ in items], device=dev)
        first = dec(prompts, xkv, input_pos=torch.arange(T, device=dev), last_only=True)[:, -1]
        caches = [ly.decoder_layer.self_attn.caches() for ly in dec.blocks]
        out = []
        for b, (_, _, _, opts) in enumerate(items):
            row = CrossKV([k[b : b + 1] if k is not None else None for k in xkv.k],
                          [v[b : b + 1] if v is not None else None for v in xkv.v],
                          xkv.mask[b : b + 1])
            if any(len(o) > 1 for o in opts):
                dec.fork_cache(1, b, caches)
            out.append(self._options_after_prefill(first[b], opts, row, T))
            tick()
        return out

    def _options_after_prefill(self, first: torch.Tensor, option_ids: list[list[int]],
                               xkv: CrossKV, T: int) -> tuple[torch.Tensor, float]:
        """`first` (V,) = logits after the prompt, whose KV cache row 0 holds (T positions).
        -> (log-probabilities (N,) float64, coverage)."""
        dec = self.modules.decoder
        dev = self.device
        first = first.log_softmax(-1)  # (V,) float32: the answer's first token
        firsts = torch.tensor([o[0] for o in option_ids], device=dev)
        total = first[firsts].double()  # (N,)
        coverage = float(first[firsts.unique()].double().exp().sum())
        multi = [i for i, o in enumerate(option_ids) if len(o) > 1]
        if multi:
            # the multi-token options as one batch after the prompt, right-padded: causal
            # attention keeps real positions from ever seeing the padding after them
            n = max(len(option_ids[i]) for i in multi) - 1
            feed = torch.zeros((len(multi), n), dtype=torch.long, device=dev)
            target = torch.zeros_like(feed)
            valid = torch.zeros((len(multi), n), dtype=torch.bool, device=dev)
            for r, i in enumerate(multi):
                o = option_ids[i]
                feed[r, : len(o) - 1] = torch.tensor(o[:-1])
                target[r, : len(o) - 1] = torch.tensor(o[1:])
                valid[r, : len(o) - 1] = True
            dec.fork_cache(len(multi))
            logits = dec(feed, xkv, input_pos=torch.arange(T, T + n, device=dev))  # (R, n, V)
            lp = logits.log_softmax(-1).gather(-1, target[..., None])[..., 0]
            lp = torch.where(valid, lp, torch.zeros_like(lp)).double().sum(-1)
            total[torch.tensor(multi, device=dev)] += lp
        return total.cpu(), coverage

    def ask(self, memory: torch.Tensor, mask: torch.Tensor, question: str,
            sampling: Sampling = Sampling()) -> Answer:
        return self.ask_many(memory, mask, [question], sampling)[0]

    def ask_many(self, memory: torch.Tensor, mask: torch.Tensor, questions: list[str],
                 sampling: Sampling = Sampling()) -> list[Answer]:
        """Several questions about one memory: one set of cross-attention K/V, one batch."""
        t0 = time.perf_counter()
        xkv = self.cross_kv(memory, mask)
        t_kv = time.perf_counter() - t0
        answers = self.ask_batch([(xkv, q) for q in questions], sampling)
        for a in answers:
            a.timings["cross_kv_s"] = t_kv
        return answers

    def ask_batch(self, queries: list[tuple[CrossKV, str]], sampling: Sampling = Sampling(),
                  max_new_tokens: list[int] | None = None) -> list[Answer]:
        """Questions each with its memory's K/V (`cross_kv`; pass the same object for questions
        about one memory), decoded together in batches of at most `max_batch`. Each answer
        equals what `ask` gives alone (greedy ids exactly in float32). `max_new_tokens`: each
        question's own limit (instead of `sampling.max_new_tokens`), so questions whose
        settings differ only in length still decode as one batch."""
        if self.tokenizer is None:
            raise RuntimeError("this AF2 instance has no tokenizer (built with AF2.random?)")
        prompts = [self.tokenizer.encode_prompt(q) for _, q in queries]
        answers = []
        for i in range(0, len(queries), self.max_batch):
            chunk = slice(i, i + self.max_batch)
            outs = self.generate_batch(prompts[chunk], [x for x, _ in queries[chunk]], sampling,
                                       limits=None if max_new_tokens is None else max_new_tokens[chunk])
            for prompt, o in zip(prompts[chunk], outs):
                text = self.tokenizer.answer_text(prompt, o.token_ids)
                answers.append(Answer(text, o.token_ids, prompt, o.finished, o.timings))
        return answers

    def generate_batch(self, prompts: list[list[int]], xkvs: list[CrossKV],
                       sampling: Sampling = Sampling(), eos_id: int | None = None,
                       limits: list[int] | None = None):
        """The static path: -> one `generate.Decoded` (ids, finished, timings) per prompt
        (`limits`: per-prompt max_new_tokens, see `generate.decode`)."""
        eos = eos_id if eos_id is not None else (self.tokenizer.eos_id if self.tokenizer else -1)
        return decode(self._pool, prompts, xkvs, sampling, eos, limits)

    def generate(self, prompt_ids: list[int], xkv: CrossKV, sampling: Sampling = Sampling(),
                 eos_id: int | None = None) -> tuple[list[int], bool, dict[str, float]]:
        """One prompt on the static path. -> (ids, hit_eos, timings)."""
        o = self.generate_batch([prompt_ids], [xkv], sampling, eos_id)[0]
        return o.token_ids, o.finished, o.timings

    @torch.inference_mode()
    def generate_eager(self, prompt_ids: list[int], xkv: CrossKV, sampling: Sampling = Sampling(),
                       eos_id: int | None = None) -> tuple[list[int], bool, dict[str, float]]:
        """The reference loop the static path is tested against: cache sized per call, one
        token at a time, the prefix length read back to the host in every layer."""
        max_new_tokens = sampling.max_new_tokens
        dec = self.modules.decoder
        eos = eos_id if eos_id is not None else (self.tokenizer.eos_id if self.tokenizer else -1)
        gens = sampling.generators(1, self.device)
        gen = gens[0] if gens else None
        T = len(prompt_ids)
        dec.setup_cache(1, T + max_new_tokens)
        t0 = time.perf_counter()
        ids = torch.tensor([prompt_ids], device=self.device)
        logits = dec(ids, xkv, input_pos=torch.arange(T, device=self.device), last_only=True)[0, -1]
        t_prefill = time.perf_counter() - t0
        out: list[int] = []
        finished = False
        for step in range(max_new_tokens):
            nxt = pick_token(logits, sampling, gen)
            if nxt == eos:
                finished = True
                break
            out.append(nxt)
            if step == max_new_tokens - 1:
                break
            tick()
            pos = torch.tensor([T + step], device=self.device)
            logits = dec(torch.tensor([[nxt]], device=self.device), xkv, input_pos=pos)[0, -1]
        t_total = time.perf_counter() - t0
        decode_s = t_total - t_prefill
        steps = len(out) + (1 if finished else 0) - 1
        return out, finished, {
            "prefill_s": t_prefill,
            "decode_s": decode_s,
            "tokens_per_s": (steps / decode_s) if steps > 0 and decode_s > 0 else 0.0,
        }
