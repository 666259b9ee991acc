"""`AF2Modules`: every weight of AF2 that inference uses, under our own names.

The checkpoint loaders (edge/model/checkpoint.py) build this tree on the meta device and fill
it; `AF2` (edge/model/af2.py) runs it. Neither needs the other: both import this module.
"""

from __future__ import annotations

from torch import nn

from .audio_transformer import AudioTransformer
from .config import AF2Config
from .decoder import Decoder
from .htsat import HTSAT


class AF2Modules(nn.Module):
    """Every weight of AF2 that inference uses, under our own names."""

    def __init__(self, c: AF2Config) -> None:
        super().__init__()
        self.encoder = HTSAT(c.htsat)
        self.audio_transformer = AudioTransformer(c.audio_dim, c.audio_transformer)
        self.decoder = Decoder(c.lm, c.audio_dim, c.xattn)

    def init_buffers(self) -> None:
        """Rebuild every constant buffer (after construction on the meta device + to_empty)."""
        for m in self.modules():
            init = getattr(m, "init_buffers", None)
            if m is not self and init is not None:
                init()


def release_name(c: AF2Config) -> str:
    """The released size a config matches ("3B"), or a name for a custom one."""
    names = {896: "0.5B", 1536: "1.5B", 2048: "3B"}
    return names.get(c.lm.hidden_size, f"custom-h{c.lm.hidden_size}")
