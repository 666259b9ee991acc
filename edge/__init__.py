"""flamingo-edge: live audio reasoning with Audio Flamingo 2 at the edge."""

__version__ = "0.1.0"
