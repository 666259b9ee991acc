"""Engine metadata, staleness and precision rules: pure logic, no TensorRT needed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trt_builders.metadata import (
    ENGINE_FORMAT,
    BuildTarget,
    EngineMeta,
    Profile,
    engine_file_name,
    engine_problems,
    keep_fp32,
    meta_path,
    one_line,
    target_differences,
    timing_cache_name,
)

TARGET = BuildTarget("10.3.0", "Orin", "8.7", "fp16", False, Profile(1, 4, 8), "ab" * 32)


def write_engine(tmp_path, target=TARGET, data=b"engine-bytes", **kw):
    p = tmp_path / engine_file_name(target.precision, target.profile)
    p.write_bytes(data)
    meta = EngineMeta(ENGINE_FORMAT, target, len(data), hashlib.sha256(data).hexdigest(), **kw)
    meta_path(p).write_text(meta.to_json())
    return p


def sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


# ---- profiles --------------------------------------------------------------------------
@pytest.mark.parametrize("text, want", [
    ("8", Profile(1, 4, 8)), (2, Profile(1, 2, 2)), ("1", Profile(1, 1, 1)),
    ("2:16", Profile(2, 16, 16)), ("1:4:8", Profile(1, 4, 8)), (" 1:8:32 ", Profile(1, 8, 32)),
])
def test_profile_parse(text, want):
    assert Profile.parse(text) == want


@pytest.mark.parametrize("text", ["0", "4:2", "1:8:4", "a", "1:2:3:4", "", "1:1:1000", "-1"])
def test_profile_parse_rejects(text):
    with pytest.raises(ValueError):
        Profile.parse(text)


@given(st.integers(1, 256), st.integers(1, 256), st.integers(1, 256))
def test_profile_roundtrip_or_reject(a, b, c):
    if a <= b <= c:
        p = Profile(a, b, c)
        assert Profile.parse(str(p)) == p
    else:
        with pytest.raises(ValueError):
            Profile(a, b, c)


def test_target_validation():
    with pytest.raises(ValueError):
        replace(TARGET, precision="int8")
    with pytest.raises(ValueError):
        replace(TARGET, compute_capability="sm87")


# ---- metadata --------------------------------------------------------------------------
def test_meta_json_roundtrip():
    m = EngineMeta(ENGINE_FORMAT, TARGET, 12, "cd" * 32, num_features=2048, extra={"layers": 3})
    assert EngineMeta.from_json(m.to_json()) == m
    assert json.loads(m.to_json())["target"]["profile"] == "1:4:8"


def test_current_engine_is_loadable(tmp_path):
    p = write_engine(tmp_path)
    assert engine_problems(p, TARGET, sha(p)) == []
    assert engine_problems(p, TARGET) == []  # size-only check


@pytest.mark.parametrize("change, needle", [
    ({"trt_version": "10.4.0"}, "TensorRT version"),
    ({"gpu_name": "RTX 4090"}, "GPU"),
    ({"compute_capability": "8.9"}, "compute capability"),
    ({"precision": "fp32"}, "precision"),
    ({"strongly_typed": True}, "strongly typed"),
    ({"profile": Profile(1, 4, 16)}, "batch profile"),
    ({"onnx_sha256": "cd" * 32}, "ONNX hash"),
])
def test_each_identity_change_makes_the_engine_stale(tmp_path, change, needle):
    p = write_engine(tmp_path)
    problems = engine_problems(p, replace(TARGET, **change), sha(p))
    assert len(problems) == 1 and needle in problems[0]


def test_several_differences_are_all_reported():
    other = replace(TARGET, trt_version="11.0.0", gpu_name="H100", compute_capability="9.0")
    assert len(target_differences(TARGET, other)) == 3


def test_missing_engine_or_metadata(tmp_path):
    assert "no engine" in engine_problems(tmp_path / "nope.engine", TARGET)[0]
    p = tmp_path / "foreign.engine"
    p.write_bytes(b"x")
    assert "no metadata" in engine_problems(p, TARGET)[0]


def test_unreadable_metadata(tmp_path):
    p = write_engine(tmp_path)
    meta_path(p).write_text("{not json")
    assert "unreadable metadata" in engine_problems(p, TARGET)[0]
    meta_path(p).write_text(json.dumps({"format": ENGINE_FORMAT}))
    assert "unreadable metadata" in engine_problems(p, TARGET)[0]


def test_swapped_or_truncated_engine_is_foreign(tmp_path):
    p = write_engine(tmp_path, data=b"engine-bytes")
    p.write_bytes(b"engine-BYTES")  # same size, other bytes
    assert "sha256" in engine_problems(p, TARGET, sha(p))[0]
    p.write_bytes(b"engine")
    assert "size" in engine_problems(p, TARGET, sha(p))[0]


def test_other_metadata_format(tmp_path):
    p = write_engine(tmp_path)
    d = json.loads(meta_path(p).read_text())
    d["format"] = "someone-else/3"
    meta_path(p).write_text(json.dumps(d))
    assert any("format" in x for x in engine_problems(p, TARGET, sha(p)))


def test_names():
    assert engine_file_name("fp16", Profile(1, 4, 8)) == "encoder-fp16-b8.engine"
    assert timing_cache_name("10.3.0", "8.7") == "timing-trt10.3.0-sm87.cache"


# ---- per-layer precision rule ----------------------------------------------------------
@pytest.mark.parametrize("name, ltype, outs, want", [
    ("/stages.0/stages.0.0/blk/norm1/LayerNormalization", "NORMALIZATION", ["HALF"], True),
    ("/stages.2/stages.2.3/Softmax", "SOFTMAX", ["HALF"], True),
    ("some reduce", "REDUCE", ["FLOAT"], True),
    ("/front/Conv", "CONVOLUTION", ["FLOAT"], True),
    ("/front/Log", "UNARY", ["FLOAT"], True),
    ("/stages.0/stages.0.0/LayerNormalization_pow", "ELEMENTWISE", ["HALF"], True),
    ("/stages.0/stages.0.0/blk/attn/qkv/MatMul", "MATRIX_MULTIPLY", ["HALF"], False),
    ("/front/Constant_3", "CONSTANT", ["FLOAT"], False),
    ("/front/shape_thing", "SHAPE", ["INT64"], False),
    ("/front/Gather_idx", "GATHER", ["INT64"], False),
    ("/front/Cast", "CAST", ["FLOAT"], False),
])
def test_keep_fp32(name, ltype, outs, want):
    assert keep_fp32(name, ltype, outs) is want


def test_one_line():
    assert one_line(RuntimeError("first\nsecond")) == "RuntimeError: first"
    assert one_line(ValueError()) == "ValueError"


def test_no_cache_dir_means_the_daemons_default_not_the_cwd(tmp_path, monkeypatch):
    """A backend or export started without a cache directory uses the daemon's default
    engine cache (<default data dir>/engines), never a directory relative to the cwd."""
    from edge.config import load_settings
    from trt_builders.metadata import cache_dir_or_default

    monkeypatch.setenv("FLAMINGO_EDGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    assert cache_dir_or_default(None) == tmp_path / "data" / "engines"
    assert cache_dir_or_default(None) == load_settings().engine_cache_dir()
    assert cache_dir_or_default(tmp_path / "x") == tmp_path / "x"
