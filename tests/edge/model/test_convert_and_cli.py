"""The compact layout and the `ask` command line."""

from __future__ import annotations

import json
import subprocess

import torch

from edge.model import AF2
from edge.model.checkpoint import convert, is_compact


def run_cli(*args: str) -> subprocess.CompletedProcess:
    from tests.conftest import run_cli as run

    return run(*args)


def test_compact_float32_is_bit_identical(fixture_dir, af2, expected, tmp_path):
    dst = convert(fixture_dir / "checkpoint", tmp_path / "compact", dtype="float32")
    assert is_compact(dst)
    m = AF2.load(dst)
    for (k, a), (k2, b) in zip(af2.modules.state_dict().items(), m.modules.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert torch.equal(m.encode(expected["clips"]), af2.encode(expected["clips"]))


def test_compact_float16_is_half_the_size_and_loads(fixture_dir, expected, tmp_path):
    dst = convert(fixture_dir / "checkpoint", tmp_path / "fp16", dtype="float16")
    meta = json.loads((dst / "flamingo_edge.json").read_text())
    assert meta["dtype"] == "float16" and meta["format"] == "flamingo-edge/1"
    official = sum(p.stat().st_size for p in (fixture_dir / "checkpoint" / "safe_ckpt").iterdir())
    assert (dst / "model.safetensors").stat().st_size < official / 3  # no duplicates, 2 bytes
    m = AF2.load(dst, dtype="float16")
    mem = m.memory(m.encode(expected["clips"]), torch.ones(3))
    assert mem.shape == (192, 256) and torch.isfinite(mem).all()


def test_ask_cli_json_matches_the_official_greedy_answer(fixture_dir, expected, fixture_info):
    out = run_cli("ask", "--model", str(fixture_dir / "checkpoint"), str(fixture_dir / "input.wav"),
                  fixture_info["question"], "--max-new-tokens", "24", "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert set(res) >= {"answer", "token_ids", "prompt_ids", "windows", "timings"}
    assert res["prompt_ids"] + res["token_ids"] == expected["greedy_ids"].tolist()
    assert res["answer"] == fixture_info["decoded_answer"]
    assert res["windows"] == 3


def test_ask_cli_sampling_is_seeded(fixture_dir):
    args = ["ask", "--model", str(fixture_dir / "checkpoint"), str(fixture_dir / "input.wav"),
            "what is it?", "--max-new-tokens", "8", "--top-k", "30", "--top-p", "0.95",
            "--seed", "5", "--json"]
    a, b = run_cli(*args), run_cli(*args)
    assert a.returncode == 0, a.stderr
    assert json.loads(a.stdout)["token_ids"] == json.loads(b.stdout)["token_ids"]


def test_ask_cli_errors_are_one_line(fixture_dir, tmp_path):
    bad_audio = tmp_path / "notes.wav"
    bad_audio.write_text("not audio")
    out = run_cli("ask", "--model", str(fixture_dir / "checkpoint"), str(bad_audio), "q")
    assert out.returncode != 0
    assert "notes.wav: cannot read audio" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("ask", "--model", str(tmp_path / "missing"), str(bad_audio), "q")
    assert out.returncode != 0 and "no such model directory" in out.stderr
    assert "Traceback" not in out.stderr
    out = run_cli("ask", "--model", str(fixture_dir / "checkpoint"), str(bad_audio), "q",
                  "--greedy", "--seed", "3")
    assert out.returncode == 2 and "--greedy cannot be combined" in out.stderr


def test_model_convert_cli_writes_a_loadable_compact_checkpoint(fixture_dir, tmp_path, expected):
    dst = tmp_path / "fp32"
    out = run_cli("model", "convert", str(fixture_dir / "checkpoint"), str(dst), "--dtype", "float32")
    assert out.returncode == 0, out.stderr
    assert "wrote" in out.stdout and is_compact(dst)
    res = run_cli("ask", "--model", str(dst), str(fixture_dir / "input.wav"),
                  "What sound is this? Is anything abnormal?", "--max-new-tokens", "24", "--json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["prompt_ids"] + got["token_ids"] == expected["greedy_ids"].tolist()
    bad = run_cli("model", "convert", str(tmp_path), str(tmp_path / "x"))
    assert bad.returncode == 1 and "metadata.json: missing" in bad.stderr
