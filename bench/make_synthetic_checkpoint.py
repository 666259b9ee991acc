"""Write a synthetic AF2 checkpoint of several GB in the OFFICIAL on-disk layout (random values).

    python bench/make_synthetic_checkpoint.py [--dir /tmp/fe-synth] [--layers 4]

Every key and shape comes from the released 0.5B layout (`tests/fixtures/af2_layout.json`,
or --layout), keeping only the first --layers language-model layers, so the file has exactly the
official structure: the encoder again under `clap.nvclap.*` (with the STFT/fusion/head tensors
AF2 never uses), `audio_transformer_clap.*`, every decoder layer twice
(`lang_encoder.model.layers.N.decoder_layer.*` and `lang_encoder.old_decoder_blocks.N.*`), every
cross-attention block twice, and `lm_head.weight` beside `embed_tokens.weight` (duplicates hold
identical values), float32, split into chunks listed by `safe_ckpt/metadata.json`.

Also written: `clap_ckpt/epoch_16.pt` (a torch pickle of {"state_dict": module.audio_branch.*,
...} plus numpy scalar metadata, like the AF-CLAP training checkpoint), `lm/config.json` (Qwen2.5-0.5B
with --layers layers) and `lm/tokenizer.json` (a word-level tokenizer with exactly as many tokens
as the Qwen2.5 base tokenizer, 151665, so that + AF2's 4 special tokens = 151669 embedding rows).
With 4 layers: 3.3 GB of safe_ckpt, 1.1 GB of pickle, a 2.3 GB model in float32.

Never commit the output; the default location is outside the repository.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

DEFAULT_LAYOUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "af2_layout.json"
DEFAULT_DIR = Path("/tmp/fe-synth")
QWEN_BASE_TOKENS = 151643  # BPE tokens of the Qwen2.5 tokenizer
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
                "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>",
                "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
                "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
AF2_SPECIAL = 4  # <audio>, <|endofchunk|>, <|PAD_TOKEN|>, <SEP>

_LAYER_RE = re.compile(r"^lang_encoder\.(?:model\.layers|old_decoder_blocks|"
                       r"gated_cross_attn_layers_sound)\.(\d+)\.")


def canonical(key: str) -> str:
    """The key whose values a duplicate shares (so duplicates are written identical)."""
    m = re.match(r"^lang_encoder\.old_decoder_blocks\.(\d+)\.(.*)$", key)
    if m:
        return f"lang_encoder.model.layers.{m[1]}.decoder_layer.{m[2]}"
    m = re.match(r"^lang_encoder\.gated_cross_attn_layers_sound\.(\d+)\.(.*)$", key)
    if m:
        return f"lang_encoder.model.layers.{m[1]}.gated_cross_attn_layer_sound.{m[2]}"
    if key == "lang_encoder.lm_head.weight":
        return "lang_encoder.model.embed_tokens.weight"
    return key


def select_layout(layout: dict[str, list[int]], layers: int) -> dict[str, list[int]]:
    out = {}
    for k, shape in layout.items():
        m = _LAYER_RE.match(k)
        if m and int(m[1]) >= layers:
            continue
        out[k] = shape
    return out


def tensor_for(key: str, shape: list[int], salt: int = 0) -> torch.Tensor:
    """Deterministic values for `key` (the same for every duplicate of one canonical key)."""
    if key.endswith("num_batches_tracked"):
        return torch.tensor(100, dtype=torch.int64)
    if key.endswith("relative_position_index"):
        n = math.isqrt(shape[0])
        return torch.arange(shape[0] * shape[1], dtype=torch.int64).reshape(shape) % (2 * n - 1) ** 2
    if key.endswith(("running_var", "norm.weight")):
        return torch.ones(shape)
    g = torch.Generator().manual_seed(zlib.crc32(canonical(key).encode()) + salt)
    return torch.randn(shape, generator=g).mul_(0.02)


def write_tokenizer(path: Path, base_tokens: int) -> int:
    """A word-level tokenizer with `base_tokens` entries, the last ones Qwen's specials."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = QWEN_SPECIAL[: max(0, base_tokens - QWEN_BASE_TOKENS)]
    n_plain = base_tokens - len(specials)
    vocab = {f"t{i}": i for i in range(n_plain)}
    vocab["[UNK]"] = 0  # t0 becomes the unknown token
    del vocab["t0"]
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials or ["<|endoftext|>"])
    tok.save(str(path))
    return tok.get_vocab_size(with_added_tokens=True)


def qwen_config(layers: int) -> dict:
    """Qwen2.5-0.5B's config.json with `layers` decoder layers."""
    return {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896,
        "initializer_range": 0.02, "intermediate_size": 4864, "max_position_embeddings": 32768,
        "max_window_layers": layers, "model_type": "qwen2", "num_attention_heads": 14,
        "num_hidden_layers": layers, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16", "transformers_version": "4.46.3", "use_cache": True,
        "use_sliding_window": False, "vocab_size": 151936,
    }


def make(dst: Path = DEFAULT_DIR, layers: int = 4, layout_path: Path = DEFAULT_LAYOUT,
         chunk_bytes: int = 1 << 30, clap_pickle: bool = True, log=print) -> dict:
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    layout = json.loads(Path(layout_path).read_text())["0.5B"]
    keys = select_layout(layout, layers)
    emb_rows = keys["lang_encoder.model.embed_tokens.weight"][0]
    dst = Path(dst)
    for sub in ("safe_ckpt", "clap_ckpt", "lm"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    for old in (dst / "safe_ckpt").glob("*.safetensors"):
        old.unlink()

    # chunks of about chunk_bytes, in the layout's key order
    chunks: list[list[str]] = [[]]
    size = 0
    for k, shape in keys.items():
        n = 4 * math.prod(shape)
        if chunks[-1] and size + n > chunk_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(k)
        size += n
    meta = {}
    total = 0
    for i, part in enumerate(chunks):
        name = f"model_chunk_{i}"
        tensors = {k: tensor_for(k, keys[k]) for k in part}
        path = dst / "safe_ckpt" / f"{name}.safetensors"
        save_file(tensors, str(path))
        total += path.stat().st_size
        meta[name] = part
        log(f"  {path.name}: {len(part)} tensors, {path.stat().st_size / 1e9:.2f} GB")
        del tensors
    (dst / "safe_ckpt" / "metadata.json").write_text(json.dumps(meta))

    clap_size = 0
    if clap_pickle:
        # the AF-CLAP training checkpoint: the encoder under module.audio_branch.* (values differ
        # from clap.nvclap.*: the safe_ckpt's finetuned copy must win), plus other heads
        sd = {"module.audio_branch." + k[len("clap.nvclap."):]: tensor_for(k, s, salt=1)
              for k, s in keys.items() if k.startswith("clap.nvclap.")}
        sd["module.text_branch.embeddings.word_embeddings.weight"] = torch.randn(1024, 64)
        sd["module.audio_projection.0.weight"] = torch.randn(1024, 2048) * 0.02
        sd["module.text_projection.0.weight"] = torch.randn(1024, 1024) * 0.02
        sd["module.logit_scale_a"] = torch.tensor(2.0)
        sd["module.logit_scale_t"] = torch.tensor(2.0)
        obj = {"epoch": 16, "state_dict": sd, "best_score": np.float64(0.123),
               "dtype": np.dtype("float32"), "step": np.int64(16000)}
        path = dst / "clap_ckpt" / "epoch_16.pt"
        torch.save(obj, path)
        clap_size = path.stat().st_size
        log(f"  {path.name}: {len(sd)} tensors, {clap_size / 1e9:.2f} GB")
        del sd, obj

    base = emb_rows - AF2_SPECIAL
    n_tok = write_tokenizer(dst / "lm" / "tokenizer.json", base)
    if n_tok != base:
        raise RuntimeError(f"tokenizer has {n_tok} tokens, wanted {base}")
    (dst / "lm" / "config.json").write_text(json.dumps(qwen_config(layers), indent=2))
    (dst / "lm" / "tokenizer_config.json").write_text(json.dumps(
        {"model_max_length": 131072, "tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|endoftext|>"}))
    info = {
        "dir": str(dst), "layers": layers, "keys": len(keys), "chunks": len(chunks),
        "safe_ckpt_bytes": total, "clap_ckpt_bytes": clap_size, "embedding_rows": emb_rows,
        "numbers_in_safe_ckpt": sum(math.prod(s) for s in keys.values()),
        "seconds": time.perf_counter() - t0,
    }
    (dst / "SYNTHETIC.json").write_text(json.dumps(info, indent=1))
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--layers", type=int, default=4, help="language-model layers kept (0.5B has 24)")
    ap.add_argument("--layout", type=Path, default=DEFAULT_LAYOUT)
    ap.add_argument("--chunk-gb", type=float, default=1.0)
    ap.add_argument("--no-clap-pickle", action="store_true")
    args = ap.parse_args()
    info = make(args.dir, args.layers, args.layout, int(args.chunk_gb * 2**30),
                not args.no_clap_pickle, log=lambda s: print(s, file=sys.stderr))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
