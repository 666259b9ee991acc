"""Encoder backends and their selection with fallback (CPU)."""

from __future__ import annotations

import logging

import pytest
import torch

from edge.encoder_backends import (
    Candidate,
    EncoderBackend,
    Environment,
    OnnxRuntimeBackend,
    TorchBackend,
    fallback_chain,
    make_backend,
    ort_providers_for,
    ort_trt_options,
    select_backend,
    unavailable_reason,
)
from edge.model.audio import int16_roundtrip_torch
from trt_builders.export import ensure_onnx

from .conftest import rel_err

CPU_ONLY = Environment(cuda=False, tensorrt="python package 'tensorrt' is not installed",
                       onnxruntime=True, onnx=True, ort_providers=("CPUExecutionProvider",))
NOTHING = Environment(cuda=False, tensorrt="python package 'tensorrt' is not installed",
                      onnxruntime=False, onnx=False)
GPU_BOX = Environment(cuda=True, tensorrt=None, onnxruntime=True, onnx=True,
                      ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"))


# ---- chains and reasons (pure) ---------------------------------------------------------
def test_chains():
    s = lambda k, *a: [str(c) for c in fallback_chain(k, *a)]  # noqa: E731
    assert s("tensorrt") == ["tensorrt float16", "onnxruntime CUDA", "torch cuda float16",
                             "onnxruntime CPU", "torch cpu float32"]
    assert s("tensorrt", "cuda", "float32")[0] == "tensorrt float32"
    assert s("onnxruntime", "cpu") == ["onnxruntime CPU", "torch cpu float32"]
    assert s("onnxruntime", "cuda", "bfloat16") == ["onnxruntime CUDA", "torch cuda bfloat16",
                                                    "onnxruntime CPU", "torch cpu float32"]
    assert s("torch", "cuda", "bf16") == ["torch cuda bfloat16", "torch cpu float32"]
    assert s("torch", "cpu", "float32") == ["torch cpu float32"]
    assert s("torch", "cpu", "bfloat16") == ["torch cpu bfloat16", "torch cpu float32"]


@pytest.mark.parametrize("args", [("tflite",), ("torch", "tpu"), ("torch", "cpu", "int8")])
def test_chain_rejects_bad_requests(args):
    with pytest.raises(ValueError):
        fallback_chain(*args)


def test_reasons():
    trt, ort_cuda, ort_cpu = (Candidate("tensorrt", "cuda", "float16"),
                              Candidate("onnxruntime", "cuda", "float32"),
                              Candidate("onnxruntime", "cpu", "float32"))
    torch_cuda = Candidate("torch", "cuda", "float16")
    assert "tensorrt" in unavailable_reason(trt, CPU_ONLY)
    assert "onnxruntime-gpu" in unavailable_reason(ort_cuda, CPU_ONLY)
    assert unavailable_reason(ort_cpu, CPU_ONLY) is None
    assert "CUDA" in unavailable_reason(torch_cuda, CPU_ONLY)
    assert "onnxruntime is not installed" in unavailable_reason(ort_cpu, NOTHING)
    for c in (trt, ort_cuda, ort_cpu, torch_cuda):
        assert unavailable_reason(c, GPU_BOX) is None
    no_onnx = Environment(True, None, True, False, ("CPUExecutionProvider",))
    assert "'onnx'" in unavailable_reason(ort_cpu, no_onnx)
    assert unavailable_reason(ort_cpu, no_onnx, have_onnx_file=True) is None
    for r in (unavailable_reason(c, NOTHING) for c in (trt, ort_cuda, ort_cpu, torch_cuda)):
        assert r and "\n" not in r


def test_ort_providers():
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort_providers_for("cpu", avail) == ["CPUExecutionProvider"]
    assert ort_providers_for("cuda", avail) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort_providers_for("cuda", avail, True)[0] == "TensorrtExecutionProvider"
    with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
        ort_providers_for("cuda", ["CPUExecutionProvider"])


def test_ort_trt_provider_options(tmp_path):
    # float32 only (weak FP16 without per-layer constraints would overflow the mel front end),
    # one explicit batch profile in the documented "name:d0xd1" format, the cache dir created
    o = ort_trt_options(8, tmp_path)
    assert o["trt_fp16_enable"] is False
    assert (o["trt_profile_min_shapes"], o["trt_profile_opt_shapes"], o["trt_profile_max_shapes"]) == \
        ("clips:1x160000", "clips:8x160000", "clips:8x160000")
    assert o["trt_engine_cache_enable"] is True and (tmp_path / "ort-trt").is_dir()
    assert "trt_engine_cache_path" not in ort_trt_options(2)


# ---- selection on this machine ---------------------------------------------------------
def test_tensorrt_request_falls_back_to_ort_cpu_with_one_line(tiny, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="edge.encoder_backends")
    sel = select_backend("tensorrt", tiny, cache_dir=tmp_path, env=CPU_ONLY, max_batch=2)
    b = sel.backend
    assert isinstance(b, OnnxRuntimeBackend) and b.describe() == "onnxruntime CPUExecutionProvider"
    msg = b.fallback_reason
    assert msg and "\n" not in msg and "tensorrt float16" in msg and "using onnxruntime" in msg
    assert [str(c) for c, _ in sel.skipped] == ["tensorrt float16", "onnxruntime CUDA", "torch cuda float16"]
    assert msg in caplog.text


def test_nothing_installed_means_torch_cpu(tiny, tmp_path):
    b = make_backend("tensorrt", tiny, cache_dir=tmp_path, env=NOTHING)
    assert isinstance(b, TorchBackend) and b.describe() == "torch cpu float32"
    assert "onnxruntime is not installed" in b.fallback_reason


def test_start_failure_is_a_reason_not_a_traceback(tiny, tmp_path):
    # the environment claims TensorRT works, but on this machine it does not: the start fails
    b = make_backend("tensorrt", tiny, cache_dir=tmp_path,
                     env=Environment(False, None, True, True, ("CPUExecutionProvider",)))
    assert b.kind == "onnxruntime"
    assert "TensorRTUnavailable" in b.fallback_reason and "\n" not in b.fallback_reason


def test_honoured_request_has_no_reason(tiny, tmp_path):
    for kind in ("torch", "onnxruntime"):
        b = make_backend(kind, tiny, cache_dir=tmp_path, env=CPU_ONLY)
        assert b.kind == kind and b.fallback_reason is None


def test_missing_onnx_file_falls_back(tiny, tmp_path):
    b = make_backend("onnxruntime", tiny, onnx_path=tmp_path / "missing.onnx", env=CPU_ONLY)
    assert b.kind == "torch" and "FileNotFoundError" in b.fallback_reason


# ---- the backends themselves -----------------------------------------------------------
@pytest.fixture(scope="module")
def clips(expected):
    return expected["clips"]


def test_all_backends_agree_with_official_tokens(tiny, tiny_onnx, clips, expected):
    backends = [TorchBackend(tiny), TorchBackend(tiny, batch_invariant=False),
                OnnxRuntimeBackend(tiny_onnx, max_batch=2)]
    for b in backends:
        out = b.encode(clips)
        assert isinstance(b, EncoderBackend)
        assert out.shape == (3, 64, 256) and out.dtype == torch.float32
        assert out.device == b.output_device
        assert rel_err(out, expected["clap_tokens"]) < 1e-4, b.describe()


def test_torch_backend_equals_af2_encode(tiny, clips):
    assert torch.equal(TorchBackend(tiny).encode(clips), tiny.encode(clips))


def test_ort_batch_split_and_dynamic_batch(tiny_onnx, clips):
    whole = OnnxRuntimeBackend(tiny_onnx, max_batch=3).encode(clips)
    split = OnnxRuntimeBackend(tiny_onnx, max_batch=2).encode(clips)  # 2 + 1
    ones = torch.cat([OnnxRuntimeBackend(tiny_onnx, max_batch=1).encode(clips[i:i + 1]) for i in range(3)])
    assert rel_err(split, whole) < 1e-6 and rel_err(ones, whole) < 1e-6


def test_round_trip_applied_once_and_idempotent(tiny_onnx, clips):
    b = OnnxRuntimeBackend(tiny_onnx)
    loud = clips * 3.0  # out of range: clamped by the round trip
    assert torch.equal(b.encode(loud), b.encode(int16_roundtrip_torch(loud)))
    assert torch.equal(b.encode(clips), b.encode(int16_roundtrip_torch(clips)))


def test_torch_backend_other_dtype(tiny, clips, expected):
    b = TorchBackend(tiny, dtype="bfloat16")
    assert b.describe() == "torch cpu bfloat16"
    assert tiny.modules.encoder.patch_embed.proj.weight.dtype == torch.float32  # model untouched
    out = b.encode(clips)
    assert out.dtype == torch.float32 and rel_err(out, expected["clap_tokens"]) < 5e-2


@pytest.mark.parametrize("shape", [(160000,), (2, 16000), (1, 2, 160000)])
def test_encode_validates_shape(tiny, shape):
    with pytest.raises(ValueError, match="160000"):
        TorchBackend(tiny).encode(torch.zeros(shape))


def test_empty_batch(tiny, tiny_onnx):
    for b in (TorchBackend(tiny), OnnxRuntimeBackend(tiny_onnx)):
        assert b.encode(torch.zeros(0, 160000)).shape == (0, 64, 256)


def test_ensure_onnx_caches_and_follows_weights(tiny, tmp_path):
    import copy

    p1 = ensure_onnx(tiny, tmp_path)
    mtime = p1.stat().st_mtime_ns
    assert ensure_onnx(tiny, tmp_path) == p1 and p1.stat().st_mtime_ns == mtime
    other = copy.copy(tiny)
    other.modules = copy.deepcopy(tiny.modules)
    with torch.no_grad():
        other.modules.encoder.norm.bias[0] += 0.5
    p2 = ensure_onnx(other, tmp_path)
    assert p2 != p1 and p2.is_file()
