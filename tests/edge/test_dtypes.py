"""edge/dtypes.py: one way to read a dtype name, and an error that names the bad value."""

from __future__ import annotations

import pytest
import torch

from edge.dtypes import dtype_name, parse_dtype


@pytest.mark.parametrize("given,name", [
    ("float32", "float32"), ("fp32", "float32"), ("FP32", "float32"),
    ("bfloat16", "bfloat16"), ("bf16", "bfloat16"), ("BF16", "bfloat16"),
    ("float16", "float16"), ("fp16", "float16"), ("half", "float16"), ("Half", "float16"),
    (torch.float32, "float32"), (torch.bfloat16, "bfloat16"), (torch.float16, "float16"),
])
def test_names_aliases_any_case_and_torch_dtypes_map_to_one_name(given, name):
    assert dtype_name(given) == name
    assert parse_dtype(given) is getattr(torch, name)


def test_an_unknown_name_is_refused_naming_the_setting_the_value_and_the_choices():
    with pytest.raises(ValueError) as e:
        parse_dtype("float8", "model.dtype")
    assert str(e.value) == "unknown model.dtype 'float8'; use float32, float16 or bfloat16"


def test_a_torch_dtype_the_model_cannot_run_is_refused_by_name():
    with pytest.raises(ValueError, match=r"unsupported encoder dtype torch\.int8; use float32"):
        dtype_name(torch.int8, "encoder dtype")
    with pytest.raises(ValueError, match=r"unknown dtype 'float64'"):
        parse_dtype("float64")  # a real torch dtype, but not one the model runs in
