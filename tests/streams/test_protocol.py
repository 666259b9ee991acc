import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.protocol import (
    HEADER, HEADER_SIZE, MAGIC, REASONS, FrameError, decode_frame, encode_frame,
)


def test_header_is_32_bytes_little_endian():
    b = encode_frame(np.zeros(10, np.float32), 16000, 7, 123456789, "int16")
    assert HEADER_SIZE == 32 and len(b) == 32 + 20
    assert b[:4] == MAGIC and b[4] == 1 and b[5] == 1 and b[6] == 1
    assert struct.unpack_from("<I", b, 8)[0] == 16000
    assert struct.unpack_from("<I", b, 12)[0] == 7
    assert struct.unpack_from("<q", b, 16)[0] == 123456789
    assert struct.unpack_from("<I", b, 24)[0] == 10


@pytest.mark.parametrize("fmt", ["int16", "float32"])
@pytest.mark.parametrize("channels", [1, 2])
def test_roundtrip(fmt, channels):
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.9, 0.9, (480, channels)).astype(np.float32)
    f = decode_frame(encode_frame(x, 48000, 2**32 - 1, 5, fmt))
    assert f.sample_rate == 48000 and f.seq == 2**32 - 1 and f.capture_time_ns == 5
    assert f.pcm.shape == (480, channels) and f.pcm.dtype == np.float32
    np.testing.assert_allclose(f.pcm, x, atol=1 / 32767 if fmt == "int16" else 0)


def _hdr(**kw):
    d = dict(magic=MAGIC, version=1, fmt=1, ch=1, flags=0, rate=16000, seq=0, t=0, count=4, res=0)
    d.update(kw)
    return HEADER.pack(d["magic"], d["version"], d["fmt"], d["ch"], d["flags"], d["rate"],
                       d["seq"], d["t"], d["count"], d["res"])


@pytest.mark.parametrize("data,reason", [
    (b"\0" * (2 << 20), "too_large"),
    (b"FEAF", "too_short"),
    (_hdr(magic=b"XXXX") + b"\0" * 8, "bad_magic"),
    (_hdr(version=2) + b"\0" * 8, "bad_version"),
    (_hdr(fmt=9) + b"\0" * 8, "bad_format"),
    (_hdr(ch=0) + b"", "bad_channels"),
    (_hdr(ch=9) + b"\0" * 72, "bad_channels"),
    (_hdr(flags=1) + b"\0" * 8, "bad_flags"),
    (_hdr(rate=12345) + b"\0" * 8, "bad_rate"),
    (_hdr(count=0), "empty"),
    (_hdr(count=16000 * 11) + b"\0" * 10, "too_long"),
    (_hdr() + b"\0" * 7, "length_mismatch"),
    (_hdr(fmt=2) + np.array([0, np.nan, 0, 0], "<f4").tobytes(), "non_finite"),
    (_hdr(fmt=2) + np.array([0, np.inf, 0, 0], "<f4").tobytes(), "non_finite"),
])
def test_rejects_by_reason(data, reason):
    with pytest.raises(FrameError) as e:
        decode_frame(data)
    assert e.value.reason == reason and reason in REASONS


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_fuzz_random_bytes_only_frame_errors(data):
    try:
        decode_frame(data)
    except FrameError as e:
        assert e.reason in REASONS


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=128), st.booleans())
def test_fuzz_mutated_headers(header, payload, keep_magic):
    data = (MAGIC + header[4:] if keep_magic else header) + payload
    try:
        f = decode_frame(data)
    except FrameError as e:
        assert e.reason in REASONS
    else:
        assert np.isfinite(f.pcm).all() and np.abs(f.pcm).max(initial=0) <= 1.0
