"""Torch dtype names, one table: the model loader, the encoder backends and the daemon parse
``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16``/``half`` the same way."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def dtype_name(dtype: str | torch.dtype, what: str = "dtype") -> str:
    """A name or alias or torch dtype -> its canonical name (``"bfloat16"``); ValueError
    naming `what` for anything else."""
    if isinstance(dtype, torch.dtype):
        for k, v in DTYPES.items():
            if v == dtype:
                return k
        raise ValueError(f"unsupported {what} {dtype}; use float32, float16 or bfloat16")
    name = ALIASES.get(str(dtype).lower(), str(dtype).lower())
    if name not in DTYPES:
        raise ValueError(f"unknown {what} {dtype!r}; use float32, float16 or bfloat16")
    return name


def parse_dtype(dtype: str | torch.dtype, what: str = "dtype") -> torch.dtype:
    """A name or alias or torch dtype -> the torch dtype."""
    return DTYPES[dtype_name(dtype, what)]
