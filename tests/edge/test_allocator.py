"""The daemon gives memory the C library keeps back to the system (`edge.allocator`)."""

import ctypes
import os
import threading

import pytest

from edge import allocator
from edge.allocator import Trimmer
from edge.config import load_settings
from edge.daemon import Daemon

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class FakeLibc:
    def __init__(self, calls_wanted: int = 2):
        self.pads: list[int] = []
        self.enough = threading.Event()
        self.wanted = calls_wanted

    def malloc_trim(self, pad: int) -> int:
        self.pads.append(pad)
        if len(self.pads) >= self.wanted:
            self.enough.set()
        return 1


@pytest.mark.skipif(allocator.glibc() is None, reason="glibc only")
def test_trim_returns_the_free_pages_glibc_keeps_in_the_middle_of_its_heap():
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    size, n = 64 << 10, 1600  # 100 MB in chunks below the mmap threshold: from the heap
    ptrs = [libc.malloc(size) for _ in range(n)]
    pin = libc.malloc(size)  # holds the heap's top, so free() alone cannot shrink it
    try:
        for p in ptrs:
            ctypes.memset(p, 1, size)  # resident
        for p in ptrs:
            libc.free(p)
        held = rss_bytes()
        assert allocator.trim() is True
        assert held - rss_bytes() > 0.8 * size * n  # what free() kept, trim gave back
    finally:
        libc.free(pin)


def test_the_trimmer_calls_malloc_trim_until_stopped_and_times_each_call():
    libc, seconds = FakeLibc(), []
    t = Trimmer(0.005, observe=seconds.append, libc=libc).start()
    assert t.running
    assert libc.enough.wait(5)
    t.stop()
    assert not t.running
    n = len(libc.pads)
    assert libc.pads == [0] * n and len(seconds) == n == t.calls
    assert all(0 <= s < 1 for s in seconds)


def test_without_glibc_the_trimmer_is_a_noop(monkeypatch):
    monkeypatch.setattr(allocator, "_libc", None)  # looked up: none (musl, macOS, Windows)
    assert allocator.trim() is False
    t = Trimmer(0.005).start()
    assert not t.running
    t.stop()


def daemon(tmp_path, **allocator_cfg):
    s = load_settings(data={"data_dir": str(tmp_path / "data"),
                            "streams": [{"id": "s", "source": "file", "path": "x"}],
                            "monitors": [{"name": "loud", "kind": "gate",
                                          "triggers": ["level_dbfs > -20"]}],
                            "allocator": allocator_cfg})
    return Daemon(s, sources=[], alerts=False, http=False, log_results=False)


def test_the_daemon_owns_the_trimmer_from_start_to_stop(tmp_path, monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(allocator, "_libc", libc)
    d = daemon(tmp_path, trim_every="10ms").start()
    try:
        assert libc.enough.wait(5)
        assert d._trimmer is not None and d._trimmer.running
    finally:
        d.stop(timeout=2)
    assert not d._trimmer.running
    count = next(s.value for s in d.metrics.malloc_trim.collect()[0].samples
                 if s.name == "fe_malloc_trim_seconds_count")
    assert count == len(libc.pads)  # each call timed in fe_malloc_trim_seconds


def test_trim_every_0_turns_it_off(tmp_path, monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(allocator, "_libc", libc)
    assert load_settings(data={}).allocator.trim_every == 10.0  # on by default
    d = daemon(tmp_path, trim_every=0).start()
    d.stop(timeout=2)
    assert d._trimmer is None and libc.pads == []
