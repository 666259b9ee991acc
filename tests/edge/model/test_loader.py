"""Loading official checkpoints: streamed, deduplicated, and every failure a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from edge.model import AF2, CheckpointError
from edge.model.checkpoint import official_files


def test_each_tensor_is_read_once_from_the_duplicated_layout(fixture_dir, monkeypatch):
    from edge.model import checkpoint as ck

    reads: list[str] = []
    orig = ck.SafeChunks._copier

    def spy(path, key):
        f = orig(path, key)

        def copy_into(dst):
            reads.append(key)
            f(dst)

        return copy_into

    monkeypatch.setattr(ck.SafeChunks, "_copier", staticmethod(spy))
    m = AF2.load(fixture_dir / "checkpoint")
    assert len(reads) == len(set(reads))
    assert not any(k.startswith("lang_encoder.old_decoder_blocks") for k in reads)
    assert not any(k.startswith("lang_encoder.gated_cross_attn_layers_sound") for k in reads)
    assert "lang_encoder.lm_head.weight" not in reads  # tied to the embedding: one copy
    assert not any(".tscam_conv." in k or ".head." in k or "fusion_model" in k for k in reads)
    n_params = len([k for k in m.modules.state_dict() if not k.endswith("num_batches_tracked")])
    assert len(reads) == n_params


def test_vocab_comes_from_the_tensor(af2, expected):
    assert af2.config.lm.vocab_size == expected["prompt_logits"].shape[1] == 404


def test_missing_chunk_is_named(ckpt_copy):
    (ckpt_copy / "safe_ckpt" / "model_chunk_1.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model_chunk_1\.safetensors: missing weights file"):
        AF2.load(ckpt_copy)


def test_missing_metadata_is_named(ckpt_copy):
    (ckpt_copy / "safe_ckpt" / "metadata.json").unlink()
    with pytest.raises(CheckpointError, match=r"metadata\.json: missing"):
        AF2.load(ckpt_copy)


def test_wrong_shape_names_file_key_expected_and_found(ckpt_copy):
    path = ckpt_copy / "safe_ckpt" / "model_chunk_1.safetensors"
    sd = load_file(str(path))
    key = "lang_encoder.model.layers.0.decoder_layer.mlp.up_proj.weight"
    assert key in sd
    sd[key] = torch.zeros(100, 64)
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as e:
        AF2.load(ckpt_copy)
    msg = str(e.value)
    assert "model_chunk_1.safetensors" in msg and key in msg
    assert "expected shape [128, 64]" in msg and "found [100, 64]" in msg


def test_config_that_disagrees_with_the_tensors_is_refused(ckpt_copy):
    cfg = json.loads((ckpt_copy / "lm" / "config.json").read_text())
    cfg["intermediate_size"] = 256
    (ckpt_copy / "lm" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"expected shape \[256, 64\], found \[128, 64\]"):
        AF2.load(ckpt_copy)


def test_truncated_safetensors_is_a_clear_error(ckpt_copy):
    path = ckpt_copy / "safe_ckpt" / "model_chunk_0.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model_chunk_0\.safetensors: .*\(truncated\?\)"):
        AF2.load(ckpt_copy)


def test_missing_tensor_is_named(ckpt_copy):
    path = ckpt_copy / "safe_ckpt" / "model_chunk_1.safetensors"
    sd = load_file(str(path))
    for k in [k for k in sd if k.endswith("model.norm.weight")]:
        del sd[k]
    save_file(sd, str(path))
    with pytest.raises(CheckpointError, match=r"missing tensors decoder\.norm\.weight"):
        AF2.load(ckpt_copy)


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/flamingo-edge-pwned",))


def test_pickle_with_forbidden_global_is_refused_not_executed(ckpt_copy):
    marker = Path("/tmp/flamingo-edge-pwned")
    marker.unlink(missing_ok=True)
    torch.save({"state_dict": {"x": _Evil()}}, ckpt_copy / "clap_ckpt" / "epoch_16.pt")
    with pytest.raises(CheckpointError) as e:
        AF2.load(ckpt_copy)
    assert "epoch_16.pt" in str(e.value) and "refused" in str(e.value)
    assert "os.system" in str(e.value) or "posix.system" in str(e.value)
    assert not marker.exists()


def test_encoder_falls_back_to_the_clap_pickle(ckpt_copy, af2, expected):
    """With no clap.nvclap.* in the safe_ckpt, the encoder comes from epoch_16.pt (allow-listed
    numpy globals and all)."""
    for path in official_files(ckpt_copy):
        sd = load_file(str(path))
        save_file({k: v for k, v in sd.items() if not k.startswith("clap.nvclap.")}, str(path))
    m = AF2.load(ckpt_copy)
    tokens = m.encode(expected["clips"][:1])
    assert tokens.shape == (1, 64, 256)
    assert torch.isfinite(tokens).all()


def test_safe_ckpt_encoder_weights_win_over_the_pickle(ckpt_copy, af2, expected):
    """Official order: pickle first, safe_ckpt on top. Poison the pickle's encoder weights: the
    outputs must not change."""
    from edge.model.checkpoint import load_clap_pickle

    sd = {k: v.clone() for k, v in load_clap_pickle(ckpt_copy / "clap_ckpt" / "epoch_16.pt").items()}
    for k, v in sd.items():
        if k.startswith("module.audio_branch.") and v.is_floating_point():
            v.fill_(7.0)
    torch.save({"state_dict": sd}, ckpt_copy / "clap_ckpt" / "epoch_16.pt")
    m = AF2.load(ckpt_copy)
    assert torch.equal(m.encode(expected["clips"][:1]), af2.encode(expected["clips"][:1]))


def test_missing_tokenizer_file_says_what_to_do(ckpt_copy):
    (ckpt_copy / "lm" / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: missing tokenizer file"):
        AF2.load(ckpt_copy)


def test_missing_lm_config_is_named(ckpt_copy):
    (ckpt_copy / "lm" / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"lm/config\.json: missing"):
        AF2.load(ckpt_copy)


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such model directory"):
        AF2.load(tmp_path / "nope")


def test_unknown_dtype_and_unavailable_device(fixture_dir):
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        AF2.load(fixture_dir / "checkpoint", dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            AF2.load(fixture_dir / "checkpoint", device="cuda")


def test_large_tensors_are_copied_in_blocks_with_the_same_result(fixture_dir, af2, monkeypatch):
    """Block-wise copying (used to bound peak RSS on multi-GB tensors) gives identical weights."""
    from edge.model import checkpoint as ck

    monkeypatch.setattr(ck, "BLOCK_BYTES", 4096)  # every matrix is copied a few rows at a time
    m = AF2.load(fixture_dir / "checkpoint", dtype=torch.bfloat16)
    monkeypatch.setattr(ck, "BLOCK_BYTES", 64 << 20)
    ref = AF2.load(fixture_dir / "checkpoint", dtype=torch.bfloat16)
    for (k, a), (_, b) in zip(m.modules.state_dict().items(), ref.modules.state_dict().items()):
        assert torch.equal(a, b), k


def test_encoder_only_load_reads_no_language_model(fixture_dir, af2, expected):
    m = AF2.load(fixture_dir / "checkpoint", encoder_only=True)
    assert torch.equal(m.encode(expected["clips"][:1]), af2.encode(expected["clips"][:1]))
    assert m.modules.decoder.embed_tokens.weight.device.type == "meta"  # never allocated
    assert m.modules.audio_transformer.layer_norm.weight.device.type == "meta"
