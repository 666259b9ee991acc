"""The audio facts every layer shares, defined once (imports nothing).

AF-CLAP encodes 10-s clips at 16 kHz into 64 tokens each, and AF2 was trained on windows of at
most 30 clips (docs/AF2_REFERENCE.md). Every source resamples to `SAMPLE_RATE`; every sample
index in the daemon (ring, timeline, clips) counts samples at this rate.
"""

SAMPLE_RATE = 16000  # Hz
CLIP_SECONDS = 10
CLIP_SAMPLES = SAMPLE_RATE * CLIP_SECONDS  # 160000: one encoder input
TOKENS_PER_CLIP = 64  # AF-CLAP tokens per clip
MAX_CLIPS = 30  # clips per window (5 minutes)
