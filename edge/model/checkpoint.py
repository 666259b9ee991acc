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

Integrity (a corrupted download or disk must not load silently and answer ""):

* every safetensors header is checked against its file before any tensor is read: known
  dtypes, each tensor's byte range matching its shape, ranges inside the file, not
  overlapping, and the data section exactly as long as the header says (truncated or
  padded files are refused);
* every floating-point tensor is scanned for NaN/Inf as it streams in (after the cast, so a
  value that overflows the target dtype is caught too); a few seconds for 7 GB;
* a **content hash**: `convert`, `model fetch` and `flamingo-edge model verify --record` (any
  layout) write ``flamingo_edge.sha256.json`` with the SHA-256 and size of every file. At
  load the sizes are always compared (free) and, by default (``verify="full"``, config
  ``model.verify``), every file is re-hashed against it **in a second thread while the
  tensors stream in** (hashlib releases the GIL, so the hash runs beside the load instead
  of before it; startup cost in docs/PERFORMANCE.md "Loading"); a block of zeros written
  inside a tensor is refused, naming the file. ``verify="quick"`` (the old ``fast``) skips
  the hashes, for a device whose start-up cannot afford a second read. The model's ``model_id``
  is ``af2-<release>@sha256:<first 16 hex digits of the content hash>`` when the manifest
  exists (docs/MQTT.md), ``af2-<release>`` otherwise.
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

from edge.dtypes import dtype_name, parse_dtype
from edge.files import sha256_file

from .config import AF2Config, lm_dims_from_hf_config
from .modules import AF2Modules, release_name
from .tokenizer import AF2Tokenizer

COMPACT_FORMAT = "flamingo-edge/1"
COMPACT_META = "flamingo_edge.json"
COMPACT_WEIGHTS = "model.safetensors"
MANIFEST = "flamingo_edge.sha256.json"
VERIFY_MODES = ("quick", "full", "fast")  # fast: the old name of quick

_ST_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}

class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong."""


def check_safetensors(path: Path) -> None:
    """Refuse a safetensors file whose header does not match its size and layout."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file ({size} bytes)")
            n = int.from_bytes(head, "little")
            if n > size - 8 or n > 100 << 20:
                raise CheckpointError(f"{path}: safetensors header length {n} does not fit the "
                                      f"file ({size} bytes): truncated or not safetensors")
            header = json.loads(f.read(n))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    data = size - 8 - n
    spans = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (b, end_b) = info["dtype"], info["shape"], info["data_offsets"]
            numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {key}: malformed header entry") from None
        if dtype not in _ST_ITEMSIZE:
            raise CheckpointError(f"{path}: tensor {key}: unknown dtype {dtype!r}")
        if not (0 <= b <= end_b <= data):
            raise CheckpointError(f"{path}: tensor {key}: bytes {b}-{end_b} lie outside the "
                                  f"{data} data bytes of the file (truncated?)")
        if end_b - b != numel * _ST_ITEMSIZE[dtype]:
            raise CheckpointError(f"{path}: tensor {key}: {end_b - b} bytes for shape {shape} "
                                  f"{dtype} (expected {numel * _ST_ITEMSIZE[dtype]})")
        spans.append((b, end_b, key))
    spans.sort()
    end = 0
    for b, end_b, key in spans:
        if b < end:
            raise CheckpointError(f"{path}: tensor {key} overlaps the tensor before it")
        end = end_b
    if end != data:
        raise CheckpointError(f"{path}: the header describes {end} data bytes but the file has "
                              f"{data} (truncated or extended)")


_EXP_MASK = {torch.bfloat16: 0x7F80, torch.float16: 0x7C00}


def _all_finite(t: torch.Tensor) -> bool:
    if t.device.type != "cpu" or not t.is_contiguous():
        return bool(torch.isfinite(t).all())
    mask = _EXP_MASK.get(t.dtype)
    if mask is not None:  # numpy's int16 AND + max: ~5x torch's bf16 isfinite on a CPU
        bits = t.view(torch.int16).numpy()
        return int(np.bitwise_and(bits, mask).max()) != mask
    return bool(torch.isfinite(t.sum()))


def check_finite(t: torch.Tensor, path: Path | str, key: str) -> None:
    """Refuse NaN/Inf in a floating-point tensor (a corrupted file, or a value the target
    dtype cannot hold). Fast paths, exact count only on failure: 16-bit floats by their
    exponent bits (NaN/Inf: all ones), 32/64-bit by their sum (NaN/Inf propagate; weights
    never sum past 1e38)."""
    if not t.is_floating_point() or not t.numel() or _all_finite(t):
        return
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise CheckpointError(f"{path}: tensor {key} holds {bad} NaN/Inf value(s): a corrupted "
                              f"file? (`flamingo-edge model verify` compares it with its hashes)")


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
        check_finite(dst, path, key)

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
            check_safetensors(path)
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
                    rows = h.get_slice(key)[i:j]
            except Exception as e:  # noqa: BLE001 - whatever the reader raises becomes a CheckpointError
                raise CheckpointError(f"{path}: cannot read tensor {key} ({e})") from None
            check_finite(rows, path, key)
            return rows

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
                    check_finite(dst, path, key)
                    return
                for i in range(0, dst.shape[0], rows):
                    with safe_open(str(path), framework="pt") as h:
                        dst[i : i + rows].copy_(h.get_slice(key)[i : i + rows])
                    check_finite(dst[i : i + rows], path, key)
            except CheckpointError:
                raise
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

def meta_skeleton(config: AF2Config, dtype: torch.dtype = torch.float32) -> AF2Modules:
    """The module tree on the meta device: names and shapes, no memory."""
    with torch.device("meta"):
        mods = AF2Modules(config)
    return mods.to(dtype)


def _materialise(mods, device: torch.device, sources: dict[str, TensorSource], where: str,
                 encoder_only: bool = False, progress: Callable[[int, int], None] | None = None):
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
    total = sum(int(np.prod(plan[n].shape, dtype=np.int64)) for n in plan)
    done = 0
    if progress is not None:
        progress(0, total)
    with torch.no_grad():
        for name, t in state.items():
            if progress is not None and name in plan:
                done += int(np.prod(plan[name].shape, dtype=np.int64))
            if name in quantized:
                src = plan[name]
                if src.read_rows is None:
                    raise CheckpointError(f"{src.file}: tensor {src.key} cannot be read in blocks")
                quantized[name].quantize_from(src.read_rows)
            elif name in plan:
                plan[name].copy_into(t)  # one source tensor (or block) mapped at a time
            elif name.endswith("num_batches_tracked"):
                t.zero_()
            if progress is not None and name in plan:
                progress(done, total)
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


@dataclass
class LoadedModel:
    """A loaded checkpoint: `AF2(modules, tokenizer, config, dtype, device, model_id)`."""

    modules: AF2Modules
    tokenizer: AF2Tokenizer | None
    config: AF2Config
    dtype: torch.dtype
    device: torch.device
    model_id: str
    quantize: str  # none | int8 | int4: how the decoder's weights are stored


def load_model(model_dir: str | Path, dtype: torch.dtype | str = torch.float32,
               device: str | torch.device = "cpu", encoder_only: bool = False,
               quantize: str = "none", verify: str = "full",
               progress: Callable[[int, int], None] | None = None) -> LoadedModel:
    """Load either layout: the filled modules and what `AF2` needs around them (`AF2.load` is
    the public entry). `encoder_only`: just the AF-CLAP encoder, e.g. to export or build engines
    without holding the language model in memory. `quantize` int8/int4 stores the decoder's
    weights narrow (edge/model/quant.py), quantized as read.
    `verify`: ``quick`` checks headers, sizes and NaN/Inf; ``full`` (default) also the
    manifest's hashes, in a thread beside the load (module doc).
    ``progress(done, total)`` follows the weights streaming in (elements)."""
    from . import quant

    if quantize not in quant.MODES:
        raise ValueError(f"unknown quantize mode {quantize!r}; use none, int8 or int4")
    if verify not in VERIFY_MODES:
        raise ValueError(f"unknown verify mode {verify!r}; use quick or full")

    model_dir = Path(model_dir)
    dtype, device = parse_dtype(dtype), parse_device(device)
    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: no such model directory")
    content = verify_manifest(model_dir)  # sizes now (free), hashes beside the load
    if content is None or verify != "full":
        return _load(model_dir, dtype, device, encoder_only, quantize, progress, content)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="checkpoint-hash") as pool:
        hashing = pool.submit(verify_manifest, model_dir, full=True)
        try:
            return _load(model_dir, dtype, device, encoder_only, quantize, progress, content)
        finally:
            hashing.result()  # raises CheckpointError naming a corrupted file (the load is discarded)


def _load(model_dir: Path, dtype: torch.dtype, device: torch.device, encoder_only: bool, quantize: str,
          progress: Callable[[int, int], None] | None, content: str | None) -> LoadedModel:
    from . import quant

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
    mods = _materialise(skeleton, device, sources, str(model_dir), encoder_only, progress)
    if content is not None:  # the checkpoint's identity: release + content hash
        model_id = f"af2-{release_name(config)}@sha256:{content[:16]}"
    return LoadedModel(mods, tokenizer, config, dtype, device,
                       model_id or f"af2-{release_name(config)}",
                       quantize if not encoder_only else "none")


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
    name = dtype_name(dtype)
    meta = {
        "format": COMPACT_FORMAT,
        "config": model.config.to_dict(),
        "dtype": name,
        "model_id": f"{model.model_id}-{name}",
        "source": str(src.resolve()),
        "sha256": sha256_file(dst / COMPACT_WEIGHTS),
    }
    (dst / COMPACT_META).write_text(json.dumps(meta, indent=1))
    write_manifest(dst)
    return dst


def scan_checkpoint(model_dir: str | Path) -> int:
    """Check every safetensors file of a checkpoint (either layout) as loading does: header
    against size, every floating-point tensor finite; block by block, so memory stays small.
    Returns the number of tensors."""
    model_dir = Path(model_dir)
    files = [model_dir / COMPACT_WEIGHTS] if is_compact(model_dir) else official_files(model_dir)
    n = 0
    for src in SafeChunks(files).sources.values():
        n += 1
        if not src.shape:
            src.copy_into(torch.empty(()))  # checks finiteness
            continue
        rows = src.shape[0]
        step = max(1, rows // max(1, int(np.prod(src.shape, dtype=np.int64)) * 4 // BLOCK_BYTES + 1))
        assert src.read_rows is not None
        for i in range(0, rows, step):
            src.read_rows(i, min(rows, i + step))  # checks finiteness
    return n


# ---- content hashes ---------------------------------------------------------------------

def _checkpoint_files(model_dir: Path) -> list[Path]:
    """Every file of a checkpoint directory that loading reads or may read."""
    out = []
    for p in sorted(model_dir.rglob("*")):
        hidden = any(part.startswith(".") for part in p.relative_to(model_dir).parts)
        if p.is_file() and p.name != MANIFEST and not hidden:  # not huggingface_hub's .cache/
            out.append(p)
    return out


def _content_hash(files: dict[str, dict[str, Any]]) -> str:
    lines = "".join(f"{v['sha256']}  {k}\n" for k, v in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def write_manifest(model_dir: str | Path) -> str:
    """Hash every file of ``model_dir`` into ``flamingo_edge.sha256.json``; returns the
    content hash (SHA-256 over the sorted ``<sha256>  <path>`` lines)."""
    model_dir = Path(model_dir)
    files = {p.relative_to(model_dir).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
             for p in _checkpoint_files(model_dir)}
    content = _content_hash(files)
    (model_dir / MANIFEST).write_text(json.dumps({"content_sha256": content, "files": files},
                                                 indent=1, sort_keys=True))
    return content


def verify_manifest(model_dir: str | Path, full: bool = False) -> str | None:
    """Check ``model_dir`` against its manifest: every listed file present with its size
    (always), and its SHA-256 (``full``). Returns the content hash, None without a manifest;
    raises `CheckpointError` naming the first file that differs."""
    model_dir = Path(model_dir)
    path = model_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        man = json.loads(path.read_text())
        files = man["files"]
        content = man["content_sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: unreadable manifest ({e})") from None
    if _content_hash(files) != content:
        raise CheckpointError(f"{path}: the manifest does not add up (edited?)")
    for rel, info in sorted(files.items()):
        p = model_dir / rel
        if not p.is_file():
            raise CheckpointError(f"{p}: missing (listed in {MANIFEST})")
        if p.stat().st_size != info["size"]:
            raise CheckpointError(f"{p}: {p.stat().st_size} bytes, {MANIFEST} says "
                                  f"{info['size']}: truncated or replaced")
        if full and sha256_file(p) != info["sha256"]:
            raise CheckpointError(f"{p}: content differs from its SHA-256 in {MANIFEST}: "
                                  f"the file is corrupted (download it again)")
    return str(content)


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
