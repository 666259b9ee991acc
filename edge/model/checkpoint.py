"""Loading AF2 checkpoints: the official on-disk layout and our compact one.

Official layout (see docs/AF2_REFERENCE.md §1)::

    clap_ckpt/epoch_16.pt         AF-CLAP training pickle (fallback for encoder weights)
    safe_ckpt/metadata.json       {"model_chunk_0": [...keys], ...}
    safe_ckpt/model_chunk_N.safetensors
    lm/config.json, lm/tokenizer.json ...
    af2_config.json               optional; absent = released encoder dims

Compact layout (written by `flamingo-edge model convert`)::

    flamingo_edge.json            {"format": "flamingo-edge/1", "config": {...}, "dtype": ...}
    model.safetensors             one copy of every tensor, our names, target dtype
    lm/                           tokenizer files

Loading is streamed: the model is built on the meta device, materialised uninitialised in the
target dtype, and every tensor is read from the memory-mapped file, cast and copied in place one
at a time; duplicates and unused tensors (text branch, classifier head) are never read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np
import torch
from safetensors import safe_open

from .config import AF2Config, lm_dims_from_hf_config
from .tokenizer import AF2Tokenizer

COMPACT_FORMAT = "flamingo-edge/1"
COMPACT_META = "flamingo_edge.json"
COMPACT_WEIGHTS = "model.safetensors"

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong."""


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; use float32, float16 or bfloat16")
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16") from None


def parse_device(device: str | torch.device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; use cpu or cuda[:N]")
    return dev


# ---- the AF-CLAP pickle -------------------------------------------------------------------

def _numpy_safe_globals() -> list[Any]:
    """The numpy globals `epoch_16.pt` needs (scalars and dtypes in its training metadata)."""
    g: list[Any] = [np.dtype]
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    g.append(scalar)
    dtypes_mod = getattr(np, "dtypes", None)
    if dtypes_mod is not None:
        g += [getattr(dtypes_mod, n) for n in dir(dtypes_mod) if n.endswith("DType")]
    return g


def load_clap_pickle(path: Path) -> dict[str, torch.Tensor]:
    """`state_dict` of the AF-CLAP pickle, unpickled with weights_only=True and an allow-list.

    Any other global (code) in the pickle is refused before it can run.
    """
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                # legacy (non-zip) pickles cannot be memory-mapped
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing AF-CLAP checkpoint") from None
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError from a truncated zip, ...
        lines = [line.strip() for line in str(e).split("\n") if line.strip()]
        detail = next((line for line in lines if "GLOBAL" in line or "global" in line.lower()
                       and "weights_only" not in line), lines[0] if lines else type(e).__name__)
        raise CheckpointError(f"{path}: refused or unreadable pickle: {detail}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise CheckpointError(f"{path}: expected a dict with a 'state_dict' entry")
    return obj["state_dict"]


# ---- tensor sources ---------------------------------------------------------------------

BLOCK_BYTES = 64 << 20  # large tensors are copied in row blocks of about this size


@dataclass
class TensorSource:
    """Where one tensor is read from, and how to copy it into its destination."""

    file: Path
    key: str
    shape: tuple[int, ...]
    copy_into: Callable[[torch.Tensor], None]  # dst.copy_(source), casting to dst's dtype
    read_rows: Callable[[int, int], torch.Tensor] | None = None  # rows [i, j) (quantizing)


def _in_memory(path: Path, key: str, t: torch.Tensor) -> TensorSource:
    """A tensor already in memory (the CLAP pickle) as a source."""

    def copy_into(dst: torch.Tensor) -> None:
        dst.copy_(t)

    return TensorSource(path, key, tuple(t.shape), copy_into, lambda i, j: t[i:j])


class SafeChunks:
    """The tensors of a set of safetensors files, read lazily.

    Only the headers are read here. Each tensor is later copied through a short-lived memory
    map (a large one block by block), so the pages of a tensor already copied are unmapped and
    peak RSS stays near the size of the model being built, not model + checkpoint."""

    def __init__(self, files: list[Path]) -> None:
        self.sources: dict[str, TensorSource] = {}
        for path in files:
            if not path.is_file():
                raise CheckpointError(f"{path}: missing weights file")
            try:
                with safe_open(str(path), framework="pt") as h:
                    shapes = {k: tuple(h.get_slice(k).get_shape()) for k in h.keys()}  # noqa: SIM118 - safe_open is no dict: `in h` fails
            except Exception as e:  # noqa: BLE001 - whatever the reader raises becomes a CheckpointError
                raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({e})") from None
            for k, shape in shapes.items():
                self.sources.setdefault(k, TensorSource(path, k, shape, self._copier(path, k),
                                                  self._rows(path, k)))

    @staticmethod
    def _rows(path: Path, key: str) -> Callable[[int, int], torch.Tensor]:
        def read_rows(i: int, j: int) -> torch.Tensor:
            try:
                with safe_open(str(path), framework="pt") as h:
                    return h.get_slice(key)[i:j]
            except Exception as e:  # noqa: BLE001 - whatever the reader raises becomes a CheckpointError
                raise CheckpointError(f"{path}: cannot read tensor {key} ({e})") from None

        return read_rows

    @staticmethod
    def _copier(path: Path, key: str) -> Callable[[torch.Tensor], None]:
        def copy_into(dst: torch.Tensor) -> None:
            try:
                row_bytes = max(1, dst[0].numel() * 4) if dst.ndim else 4
                rows = max(1, BLOCK_BYTES // row_bytes)
                if dst.ndim == 0 or dst.shape[0] <= rows:
                    with safe_open(str(path), framework="pt") as h:
                        dst.copy_(h.get_tensor(key))
                    return
                for i in range(0, dst.shape[0], rows):
                    with safe_open(str(path), framework="pt") as h:
                        dst[i : i + rows].copy_(h.get_slice(key)[i : i + rows])
            except Exception as e:  # noqa: BLE001 - whatever the reader raises becomes a CheckpointError
                raise CheckpointError(f"{path}: cannot read tensor {key} ({e})") from None

        return copy_into


def official_files(model_dir: Path) -> list[Path]:
    meta = model_dir / "safe_ckpt" / "metadata.json"
    try:
        chunks = json.loads(meta.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{meta}: missing (not an AF2 checkpoint directory?)") from None
    except ValueError as e:
        raise CheckpointError(f"{meta}: not valid JSON ({e})") from None
    if not isinstance(chunks, dict) or not chunks:
        raise CheckpointError(f"{meta}: expected a JSON object of chunk names")
    return [model_dir / "safe_ckpt" / f"{name}.safetensors" for name in chunks]


def official_candidates(name: str) -> list[str]:
    """Official keys that hold our parameter `name`, preferred first."""
    if name.startswith("encoder."):
        return ["clap.nvclap." + name[len("encoder."):]]
    if name.startswith("audio_transformer."):
        return ["audio_transformer_clap." + name[len("audio_transformer."):]]
    rest = name[len("decoder."):]
    if rest == "lm_head.weight":
        return ["lang_encoder.lm_head.weight"]
    keys = ["lang_encoder.model." + rest]
    parts = rest.split(".")
    if parts[0] == "layers":  # the same module is also stored under its pre-Flamingo name
        i, sub = parts[1], ".".join(parts[3:])
        if parts[2] == "decoder_layer":
            keys.append(f"lang_encoder.old_decoder_blocks.{i}.{sub}")
        elif parts[2] == "gated_cross_attn_layer_sound":
            keys.append(f"lang_encoder.gated_cross_attn_layers_sound.{i}.{sub}")
    return keys


# ---- building -----------------------------------------------------------------------------

def meta_skeleton(config: AF2Config, dtype: torch.dtype = torch.float32):
    """The module tree on the meta device: names and shapes, no memory."""
    from .af2 import AF2Modules

    with torch.device("meta"):
        mods = AF2Modules(config)
    return mods.to(dtype)


def _materialise(mods, device: torch.device, sources: dict[str, TensorSource], where: str,
                 encoder_only: bool = False):
    """Allocate uninitialised storage, then fill every tensor from its source, cast on the fly.

    `encoder_only` materialises the AF-CLAP encoder alone; the audio transformer and decoder
    stay on the meta device (no memory) and cannot run. Quantized modules (edge/model/quant.py)
    read their float weight in row blocks and quantize it as it streams."""
    from . import quant

    part = mods.encoder if encoder_only else mods
    prefix = "encoder." if encoder_only else ""
    expected = {prefix + k: tuple(v.shape) for k, v in part.state_dict().items()}
    quantized = {prefix + k: m for k, m in quant.quantized_modules(part).items()}
    derived = {prefix + k for k in quant.derived_names(part)}
    plan: dict[str, TensorSource] = {}
    missing = []
    for name, shape in expected.items():
        if name.endswith("num_batches_tracked") or name in derived:
            continue
        if name in quantized:
            shape = quantized[name].logical_shape
        src = sources.get(name)
        if src is None:
            missing.append(name)
            continue
        if src.shape != shape:
            raise CheckpointError(
                f"{src.file}: tensor {src.key}: expected shape {list(shape)}, found {list(src.shape)}"
            )
        plan[name] = src
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise CheckpointError(f"{where}: missing tensors {', '.join(missing[:5])}{more}")
    part.to_empty(device=device)
    mods.init_buffers()
    state = {prefix + k: v for k, v in part.state_dict(keep_vars=True).items()}
    with torch.no_grad():
        for name, t in state.items():
            if name in quantized:
                src = plan[name]
                if src.read_rows is None:
                    raise CheckpointError(f"{src.file}: tensor {src.key} cannot be read in blocks")
                quantized[name].quantize_from(src.read_rows)
            elif name in plan:
                plan[name].copy_into(t)  # one source tensor (or block) mapped at a time
            elif name.endswith("num_batches_tracked"):
                t.zero_()
    return mods


def _lm_config(model_dir: Path, vocab: int, base: AF2Config) -> AF2Config:
    cfg_path = model_dir / "lm" / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing language-model config (Qwen2.5 config.json)")
    try:
        return base.with_lm(lm_dims_from_hf_config(cfg_path, vocab))
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def _encoder_config(model_dir: Path) -> AF2Config:
    p = model_dir / "af2_config.json"
    if not p.is_file():
        return AF2Config()  # released encoder / audio-transformer / cross-attention dims
    try:
        return AF2Config.from_dict(json.loads(p.read_text()))
    except ValueError as e:
        raise CheckpointError(f"{p}: {e}") from None


def _tokenizer(model_dir: Path, vocab: int) -> AF2Tokenizer:
    try:
        tok = AF2Tokenizer.from_dir(model_dir / "lm")
    except (FileNotFoundError, ValueError) as e:
        raise CheckpointError(str(e)) from None
    if len(tok) != vocab:
        raise CheckpointError(
            f"{model_dir / 'lm' / 'tokenizer.json'}: tokenizer has {len(tok)} tokens with AF2's "
            f"special tokens but the checkpoint's embedding has {vocab} rows (wrong Qwen2.5 size?)"
        )
    return tok


def is_compact(model_dir: Path) -> bool:
    return (Path(model_dir) / COMPACT_META).is_file()


def load_model(model_dir: str | Path, dtype: torch.dtype | str = torch.float32,
               device: str | torch.device = "cpu", encoder_only: bool = False,
               quantize: str = "none"):
    """Load either layout into an `AF2` (`encoder_only`: just the AF-CLAP encoder, e.g. to
    export or build engines without holding the language model in memory). `quantize`
    int8/int4 stores the decoder's weights narrow (edge/model/quant.py), quantized as read."""
    from . import quant
    from .af2 import AF2

    if quantize not in quant.MODES:
        raise ValueError(f"unknown quantize mode {quantize!r}; use none, int8 or int4")

    model_dir = Path(model_dir)
    dtype, device = parse_dtype(dtype), parse_device(device)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: no such model directory")
    if is_compact(model_dir):
        meta_path = model_dir / COMPACT_META
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != COMPACT_FORMAT:
                raise ValueError(f"unknown format {meta.get('format')!r}")
            config = AF2Config.from_dict(meta["config"])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{meta_path}: {e}") from None
        chunks = SafeChunks([model_dir / COMPACT_WEIGHTS])
        sources = chunks.sources
        emb = sources.get("decoder.embed_tokens.weight")
        if emb is None:
            raise CheckpointError(f"{model_dir / COMPACT_WEIGHTS}: missing decoder.embed_tokens.weight")
        if emb.shape[0] != config.lm.vocab_size:
            raise CheckpointError(f"{model_dir / COMPACT_WEIGHTS}: embedding has {emb.shape[0]} rows, "
                                  f"{COMPACT_META} says vocab_size {config.lm.vocab_size}")
        model_id = meta.get("model_id")
    else:
        chunks = SafeChunks(official_files(model_dir))
        emb = chunks.sources.get("lang_encoder.model.embed_tokens.weight")
        if emb is None:
            raise CheckpointError(f"{model_dir / 'safe_ckpt'}: no lang_encoder.model.embed_tokens.weight")
        config = _lm_config(model_dir, emb.shape[0], _encoder_config(model_dir))
        model_id = None
    tokenizer = _tokenizer(model_dir, config.lm.vocab_size)
    skeleton = meta_skeleton(config, dtype)
    if not is_compact(model_dir):
        sources = _official_sources(model_dir, chunks, list(skeleton.state_dict()))
    if not encoder_only:
        quant.swap_linears(skeleton.decoder, quantize, dtype, device)
    mods = _materialise(skeleton, device, sources, str(model_dir), encoder_only)
    m = AF2(mods, tokenizer, config, dtype, device, model_id)
    m.quantize = quantize if not encoder_only else "none"
    return m


def _official_sources(model_dir: Path, chunks: SafeChunks, names: list[str]) -> dict[str, TensorSource]:
    """Our parameter name -> source, following the official load order: the AF-CLAP pickle
    first, then the safe_ckpt on top (so `clap.nvclap.*` in the safe_ckpt wins).

    The pickle is always opened when present (memory-mapped, weights only), so a tampered one
    is refused even when the safe_ckpt already holds every encoder weight."""
    path = model_dir / "clap_ckpt" / "epoch_16.pt"
    clap = load_clap_pickle(path) if path.exists() else {}
    out: dict[str, TensorSource] = {}
    for name in names:
        for key in official_candidates(name):
            if key in chunks.sources:
                out[name] = chunks.sources[key]
                break
        else:
            key = "module.audio_branch." + name[len("encoder."):]
            if name.startswith("encoder.") and key in clap:
                out[name] = _in_memory(path, key, clap[key])
    return out


# ---- compact conversion --------------------------------------------------------------------

def convert(src: str | Path, dst: str | Path, dtype: torch.dtype | str = torch.float16) -> Path:
    """Write a deduplicated single-file checkpoint of `src` in `dtype` to `dst`."""
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    dtype = parse_dtype(dtype)
    model = load_model(src, dtype=dtype, device="cpu")
    dst.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.modules.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    save_file(state, str(dst / COMPACT_WEIGHTS))
    (dst / "lm").mkdir(exist_ok=True)
    for f in (src / "lm").iterdir():
        if f.is_file():
            shutil.copy2(f, dst / "lm" / f.name)
    dtype_name = str(dtype).replace("torch.", "")
    meta = {
        "format": COMPACT_FORMAT,
        "config": model.config.to_dict(),
        "dtype": dtype_name,
        "model_id": f"{model.model_id}-{dtype_name}",
        "source": str(src.resolve()),
        "sha256": _sha256(dst / COMPACT_WEIGHTS),
    }
    (dst / COMPACT_META).write_text(json.dumps(meta, indent=1))
    return dst


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- writing the official layout (synthetic checkpoints for tests and benchmarks) -----------

def official_keys_for(name: str, tied: bool) -> list[str]:
    """Every official key that stores our tensor `name` (the official state_dict duplicates)."""
    keys = official_candidates(name)
    if name == "decoder.embed_tokens.weight" and tied:
        keys.append("lang_encoder.lm_head.weight")
    return keys


def hf_lm_config(lm) -> dict[str, Any]:
    """A Qwen2 `config.json` for `LMDims` (vocab_size = the base tokenizer's size is unknown here,
    so the resized size is written; the loader takes the real size from the tensors)."""
    return {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "hidden_size": lm.hidden_size, "intermediate_size": lm.intermediate_size,
        "num_hidden_layers": lm.num_hidden_layers, "num_attention_heads": lm.num_attention_heads,
        "num_key_value_heads": lm.num_key_value_heads, "rope_theta": lm.rope_theta,
        "rms_norm_eps": lm.rms_norm_eps, "max_position_embeddings": lm.max_position_embeddings,
        "tie_word_embeddings": lm.tie_word_embeddings, "vocab_size": lm.vocab_size,
        "torch_dtype": "float32",
    }


def write_official(model, dst: str | Path, tokenizer_dir: str | Path, n_chunks: int = 2,
                   clap_pickle: bool = True) -> Path:
    """Write `model` (an `AF2`) in the official on-disk layout, duplicates included, float32.

    Used to make checkpoints of other dims for tests and multi-GB ones for load benchmarks.
    """
    from safetensors.torch import save_file

    dst = Path(dst)
    (dst / "safe_ckpt").mkdir(parents=True, exist_ok=True)
    tied = model.config.lm.tie_word_embeddings
    state = {k: v for k, v in model.modules.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    official: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        t = t.detach().to("cpu", torch.float32).contiguous()
        for key in official_keys_for(name, tied):
            official[key] = t.clone()  # safetensors refuses shared storage
    keys = sorted(official)
    per = -(-len(keys) // n_chunks)
    meta = {}
    for i in range(n_chunks):
        part = keys[i * per : (i + 1) * per]
        if not part:
            continue
        name = f"model_chunk_{i}"
        save_file({k: official[k] for k in part}, str(dst / "safe_ckpt" / f"{name}.safetensors"))
        meta[name] = part
        for k in part:
            del official[k]
    (dst / "safe_ckpt" / "metadata.json").write_text(json.dumps(meta))
    if clap_pickle:
        (dst / "clap_ckpt").mkdir(exist_ok=True)
        clap = {"module.audio_branch." + k[len("encoder."):]: v.detach().cpu().float().clone()
                for k, v in state.items() if k.startswith("encoder.")}
        clap["module.logit_scale_a"] = torch.tensor(1.0)
        torch.save({"epoch": 16, "state_dict": clap, "lr": np.float64(1e-4),
                    "dtype": np.dtype("float32")}, dst / "clap_ckpt" / "epoch_16.pt")
    (dst / "lm").mkdir(exist_ok=True)
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file() and f.name != "config.json":
            shutil.copy2(f, dst / "lm" / f.name)
    (dst / "lm" / "config.json").write_text(json.dumps(hf_lm_config(model.config.lm), indent=1))
    cfg = model.config.to_dict()
    (dst / "af2_config.json").write_text(json.dumps(
        {k: cfg[k] for k in ("htsat", "audio_transformer", "xattn")}, indent=1))
    return dst
