"""Dimensions of Audio Flamingo 2, as plain dataclasses.

`AF2Config.released(name)` gives the published 0.5B / 1.5B / 3B shapes; a checkpoint directory may
override the encoder, audio-transformer and cross-attention dims with `af2_config.json` (only the
tiny test fixture does) and always carries the language model's dims in `lm/config.json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

# the audio constants shared by every release, defined in edge/constants.py (re-exported)
from edge.constants import CLIP_SAMPLES, SAMPLE_RATE, TOKENS_PER_CLIP  # noqa: F401


@dataclass(frozen=True)
class HTSATDims:
    """HTS-AT ("large") Swin encoder of AF-CLAP."""

    embed_dim: int = 256
    depths: tuple[int, ...] = (2, 2, 12, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 8
    spec_size: int = 256  # Swin input is spec_size x spec_size
    patch_size: int = 4
    mel_bins: int = 64
    mlp_ratio: float = 4.0

    @property
    def num_features(self) -> int:  # width of the output tokens
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def freq_ratio(self) -> int:  # 256 // 64 = 4: how many time slices are stacked on the freq axis
        return self.spec_size // self.mel_bins


@dataclass(frozen=True)
class AudioTransformerDims:
    n_head: int = 8
    n_layers: int = 3
    d_inner: int = 2048


@dataclass(frozen=True)
class XAttnDims:
    heads: int = 8
    dim_head: int = 64
    ff_mult: int = 4
    every_n_layers: int = 1


@dataclass(frozen=True)
class LMDims:
    """Qwen2 decoder dims (from `lm/config.json`; vocab_size is the *resized* embedding size)."""

    vocab_size: int = 151669
    hidden_size: int = 2048
    intermediate_size: int = 11008
    num_hidden_layers: int = 36
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads



_RELEASED_LM = {
    "0.5B": LMDims(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                   num_attention_heads=14, num_key_value_heads=2),
    "1.5B": LMDims(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                   num_attention_heads=12, num_key_value_heads=2),
    "3B": LMDims(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                 num_attention_heads=16, num_key_value_heads=2),
}

RELEASES = tuple(_RELEASED_LM)


@dataclass(frozen=True)
class AF2Config:
    htsat: HTSATDims = field(default_factory=HTSATDims)
    audio_transformer: AudioTransformerDims = field(default_factory=AudioTransformerDims)
    xattn: XAttnDims = field(default_factory=XAttnDims)
    lm: LMDims = field(default_factory=LMDims)

    @property
    def audio_dim(self) -> int:  # width of the memory tokens (2048 released)
        return self.htsat.num_features

    @classmethod
    def released(cls, name: str) -> AF2Config:
        if name not in _RELEASED_LM:
            raise ValueError(f"unknown AF2 release {name!r}; expected one of {', '.join(RELEASES)}")
        return cls(lm=_RELEASED_LM[name])

    # ---- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("depths", "num_heads"):
            d["htsat"][k] = list(d["htsat"][k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AF2Config:
        return cls(
            htsat=_build(HTSATDims, d.get("htsat", {}), "htsat"),
            audio_transformer=_build(AudioTransformerDims, d.get("audio_transformer", {}),
                                     "audio_transformer"),
            xattn=_build(XAttnDims, d.get("xattn", {}), "xattn"),
            lm=_build(LMDims, d.get("lm", {}), "lm"),
        )

    def with_lm(self, lm: LMDims) -> AF2Config:
        return replace(self, lm=lm)


def _build(klass, values: dict[str, Any], section: str):
    known = {f.name for f in fields(klass)}
    kw = {}
    for k, v in values.items():
        if k not in known:
            continue  # af2_config.json may carry informational keys
        kw[k] = tuple(v) if isinstance(v, list) else v
    try:
        return klass(**kw)
    except TypeError as e:  # pragma: no cover - dataclass signature errors
        raise ValueError(f"invalid {section} dims: {e}") from e


def lm_dims_from_hf_config(path: Path, vocab_size: int) -> LMDims:
    """Read a Qwen2 `config.json`; `vocab_size` comes from the checkpoint's embedding tensor."""
    try:
        c = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from e
    try:
        return LMDims(
            vocab_size=vocab_size,
            hidden_size=int(c["hidden_size"]),
            intermediate_size=int(c["intermediate_size"]),
            num_hidden_layers=int(c["num_hidden_layers"]),
            num_attention_heads=int(c["num_attention_heads"]),
            num_key_value_heads=int(c.get("num_key_value_heads", c["num_attention_heads"])),
            rope_theta=float(c.get("rope_theta", 1_000_000.0)),
            rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(c.get("max_position_embeddings", 32768)),
            tie_word_embeddings=bool(c.get("tie_word_embeddings", True)),
        )
    except KeyError as e:
        raise ValueError(f"{path}: missing key {e.args[0]!r}") from e
