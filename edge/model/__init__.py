"""The AF2 model runtime: our own PyTorch modules and loaders for the official checkpoints."""

from .af2 import AF2, Answer, Sampling, Scores
from .checkpoint import CheckpointError
from .config import AF2Config

__all__ = ["AF2", "AF2Config", "Answer", "CheckpointError", "Sampling", "Scores"]
