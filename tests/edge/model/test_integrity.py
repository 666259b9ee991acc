"""Corrupted weights never load silently (issue 12 item 4): a 4 KB overwrite inside a
checkpoint chunk used to load and answer "". Real files: a copy of the af2-tiny fixture."""

from __future__ import annotations

import json
import re
import shutil
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from edge.cli import cli
from edge.model import AF2
from edge.model.checkpoint import MANIFEST, CheckpointError, convert


@pytest.fixture
def ckpt(fixture_dir, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(fixture_dir / "checkpoint", dst)
    return dst


def _data_start(path) -> int:
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def _overwrite(path, data: bytes, at_fraction: float = 0.5) -> None:
    start = _data_start(path)
    size = path.stat().st_size
    off = start + int((size - start - len(data)) * at_fraction)
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def test_random_bytes_inside_a_chunk_are_refused_naming_file_and_tensor(ckpt):
    chunk = ckpt / "safe_ckpt" / "model_chunk_1.safetensors"
    _overwrite(chunk, np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError) as e:
        AF2.load(ckpt)
    msg = str(e.value)
    assert str(chunk) in msg and "NaN/Inf" in msg and re.search(r"tensor \S+ holds \d+", msg)


def test_truncated_or_padded_chunks_are_refused_by_the_header_check(ckpt):
    chunk = ckpt / "safe_ckpt" / "model_chunk_0.safetensors"
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-4096])
    with pytest.raises(CheckpointError, match="truncated"):
        AF2.load(ckpt)
    chunk.write_bytes(data + b"\0" * 16)
    with pytest.raises(CheckpointError, match="truncated or extended"):
        AF2.load(ckpt)
    # a header whose byte ranges disagree with the shapes
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    key = next(k for k, v in header.items() if k != "__metadata__" and v["shape"])
    header[key]["shape"][-1] += 1
    raw = json.dumps(header).encode()
    chunk.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])
    with pytest.raises(CheckpointError, match=f"tensor {re.escape(key)}: .* bytes for shape"):
        AF2.load(ckpt)


def test_content_hash_from_convert_gives_the_model_id_and_catches_a_silent_overwrite(
        fixture_dir, tmp_path):
    dst = convert(fixture_dir / "checkpoint", tmp_path / "compact", dtype="float32")
    man = json.loads((dst / MANIFEST).read_text())
    assert "model.safetensors" in man["files"] and "lm/tokenizer.json" in man["files"]
    m = AF2.load(dst)
    assert m.model_id == f"af2-custom-h64@sha256:{man['content_sha256'][:16]}"
    # zeros are finite: the quick checks pass; the hashes, checked at every load by default
    # (beside the load, in a thread), do not
    _overwrite(dst / "model.safetensors", b"\0" * 4096)
    with pytest.raises(CheckpointError, match="model.safetensors: content differs from its SHA-256"):
        AF2.load(dst)
    assert AF2.load(dst, verify="quick").model_id == m.model_id  # the operator's opt-out
    with pytest.raises(CheckpointError, match="content differs from its SHA-256"):
        load_settings_and_model(dst)
    res = CliRunner().invoke(cli, ["model", "verify", str(dst)])
    assert res.exit_code == 1 and "model.safetensors: content differs" in res.output
    # a size change is caught at every load, for free
    with open(dst / "lm" / "tokenizer.json", "a") as f:
        f.write(" ")
    with pytest.raises(CheckpointError, match="tokenizer.json: .* bytes, .* says"):
        AF2.load(dst)


def test_model_verify_records_and_checks_an_official_layout(ckpt):
    res = CliRunner().invoke(cli, ["model", "verify", str(ckpt)])
    assert res.exit_code == 1 and "--record" in res.output  # nothing to compare with yet
    res = CliRunner().invoke(cli, ["model", "verify", "--record", str(ckpt)])
    assert res.exit_code == 0 and "recorded" in res.output and "every value finite" in res.output
    res = CliRunner().invoke(cli, ["model", "verify", str(ckpt)])
    assert res.exit_code == 0 and "every file matches" in res.output, res.output
    assert re.fullmatch(r"af2-\S+@sha256:[0-9a-f]{16}", AF2.load(ckpt, encoder_only=True).model_id)


def load_settings_and_model(model_dir):
    """What the daemon does with a config that says nothing about verify: the default is full."""
    from edge.config import load_settings
    from edge.daemon import load_model

    s = load_settings(data={"model": {"dir": str(model_dir), "dtype": "float32"}})
    assert s.model.verify == "full"
    return load_model(model_dir, s.model.dtype, s.model.device, verify=s.model.verify)
