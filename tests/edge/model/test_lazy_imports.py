"""`import edge.model` (and the model runtime up to a query on tensors) needs none of the optional
I/O and engine packages: a bare CUDA box with torch runs the device check without them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

BLOCK = """
import sys
for name in ("soundfile", "sounddevice", "onnxruntime", "tensorrt", "onnx"):
    sys.modules[name] = None  # `import name` now raises ImportError
"""


def run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", BLOCK + code], check=False, capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)


def test_model_runtime_imports_and_answers_without_optional_packages(fixture_dir):
    out = run(f"""
import torch
import edge.model
from edge.model import AF2, Sampling
import edge.model.generate, edge.model.checkpoint, edge.encoder_backends
m = AF2.load({str(fixture_dir / "checkpoint")!r})
clips = torch.zeros(1, 160000)
mem = m.memory(m.encode(clips), torch.ones(1))
print(len(m.ask(mem, torch.ones(1), "hum?", Sampling(max_new_tokens=3)).token_ids))
assert "soundfile" not in sys.modules or sys.modules["soundfile"] is None
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"


def test_a_file_query_without_soundfile_names_the_missing_package(fixture_dir):
    out = run(f"""
from edge.model import AF2
AF2.prepare_file({str(fixture_dir / "input.wav")!r})
""")
    assert out.returncode != 0 and "soundfile" in out.stderr
