"""Files: where flamingo-edge keeps its data by default, and a file's SHA-256.

Which data directory a command uses (``--data-dir``, else the config's ``data_dir``, else
`default_data_dir`) is `edge.config.command_settings`; the engine cache inside it is
`engine_cache_dir`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def default_data_dir() -> Path:
    """$FLAMINGO_EDGE_DATA_DIR, else $XDG_DATA_HOME/flamingo-edge (~/.local/share/flamingo-edge)."""
    env = os.environ.get("FLAMINGO_EDGE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "flamingo-edge"


def engine_cache_dir(data_dir: str | Path) -> Path:
    """Where exported ONNX files, TensorRT engines and timing caches live: <data_dir>/engines
    (unless the config sets ``model.encoder.cache_dir``: `edge.config.Settings.engine_cache_dir`)."""
    return Path(data_dir) / "engines"


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in `chunk`-byte blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
