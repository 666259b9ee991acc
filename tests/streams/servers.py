"""Real servers on loopback for the URL-source tests.

- `RtspServer`: GStreamer's RTSP server (tests/streams/rtsp_server.py) run with Debian's
  system python, which has PyGObject (`python3-gi`, `gir1.2-gst-rtsp-server-1.0`).
- `TcpProxy`: forwards a port to another and can freeze (keep the connection open, forward
  nothing), which is what a stalled camera looks like.
- `GarbageServer`: accepts connections and answers with random bytes.
- `AdtsHttpServer`: an endless AAC (ADTS) stream over HTTP, like an Icecast mount, paced in
  real time, optionally with random bytes injected between loops.

A missing component is a test failure (the README's test command installs them), not a skip.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = Path(__file__).with_name("rtsp_server.py")

MULAW = ("audio/x-raw,rate=8000,channels=1 ! mulawenc ! rtppcmupay name=pay0")


def tone_mulaw(freq: float, volume: float) -> str:
    return f"audiotestsrc is-live=true freq={freq} volume={volume} ! {MULAW}"


def tone_aac(freq: float, volume: float) -> str:
    return (f"audiotestsrc is-live=true freq={freq} volume={volume} ! "
            "audio/x-raw,rate=48000,channels=2 ! avenc_aac ! rtpmp4gpay name=pay0")


def wav_mulaw(path: Path) -> str:
    return (f"filesrc location={path} ! wavparse ! audioconvert ! audioresample ! {MULAW}")


VIDEO_ONLY = "videotestsrc is-live=true ! videoconvert ! jpegenc ! rtpjpegpay name=pay0"


class RtspServer:
    def __init__(self, mounts: list[dict], port: int = 0, cpus: set[int] | None = None) -> None:
        self.mounts = mounts
        self.port = port
        self.cpus = cpus  # run the server on these CPUs only (benchmarks: off the measured core)
        self.proc: subprocess.Popen | None = None
        self.playing: list[tuple[str, float]] = []
        self._cv = threading.Condition()

    def start(self, timeout: float = 15.0) -> RtspServer:
        if not os.path.exists(SYSTEM_PYTHON):
            pytest.fail(f"{SYSTEM_PYTHON} not found: the RTSP tests run GStreamer's RTSP server "
                        "with Debian's python3-gi (see README's test command)")
        cfg = json.dumps({"port": self.port, "mounts": self.mounts})
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        pin = ["taskset", "-c", ",".join(map(str, sorted(self.cpus)))] if self.cpus else []
        self.proc = subprocess.Popen([*pin, SYSTEM_PYTHON, str(SCRIPT), cfg], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        ready = threading.Event()
        lines: list[str] = []

        def reader() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                parts = line.split()
                lines.append(line)
                if parts[:1] == ["READY"]:
                    self.port = int(parts[1])
                    ready.set()
                elif parts[:1] == ["PLAYING"]:
                    with self._cv:
                        self.playing.append((parts[1], float(parts[2])))
                        self._cv.notify_all()
            ready.set()

        threading.Thread(target=reader, daemon=True).start()
        if not ready.wait(timeout) or self.proc.poll() is not None:
            err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
            self.kill()
            pytest.fail(f"GStreamer RTSP server did not start: {''.join(lines)} {err[-2000:]} "
                        "(needs python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-"
                        "base/-good, gstreamer1.0-libav)")
        return self

    def url(self, path: str, creds: str | None = None) -> str:
        return f"rtsp://{creds + '@' if creds else ''}127.0.0.1:{self.port}{path}"

    def wait_playing(self, path: str, n: int = 1, timeout: float = 10.0) -> float:
        """UNIX time the n-th pipeline of ``path`` reached PLAYING."""
        with self._cv:
            self._cv.wait_for(lambda: len([p for p in self.playing if p[0] == path]) >= n, timeout)
            times = [t for p, t in self.playing if p == path]
        assert len(times) >= n, f"{path} was not played {n} time(s): {self.playing}"
        return times[n - 1]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Listener:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.closed = threading.Event()
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self.handle, args=(c,), daemon=True).start()

    def handle(self, c: socket.socket) -> None:  # pragma: no cover - overridden
        c.close()

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


class TcpProxy(_Listener):
    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.frozen = threading.Event()
        self._conns: list[tuple[socket.socket, socket.socket]] = []
        super().__init__()

    def handle(self, c: socket.socket) -> None:
        u = socket.create_connection(("127.0.0.1", self.upstream))
        self._conns.append((c, u))
        for a, b in ((c, u), (u, c)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while not self.closed.is_set():
                if self.frozen.is_set():
                    time.sleep(0.02)
                    continue
                data = a.recv(65536)
                if not data:
                    break
                if self.frozen.is_set():
                    continue  # swallowed: a stall loses what was in flight
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.close()
            except OSError:
                pass

    def drop_connections(self) -> None:
        for a, b in self._conns:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass
        self._conns.clear()


class GarbageServer(_Listener):
    def handle(self, c: socket.socket) -> None:
        rng = np.random.default_rng(self.connections)
        try:
            for _ in range(20):
                c.sendall(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
                time.sleep(0.01)
        except OSError:
            pass
        c.close()


def encode_audio(x: np.ndarray, fmt: str, codec: str, rate: int, layout: str,
                 sample_fmt: str = "fltp") -> bytes:
    """(channels, n) float32 in [-1, 1] -> container ``fmt`` holding it encoded with FFmpeg's
    ``codec`` (PyAV) in 1024-sample frames of ``sample_fmt`` ("fltp", or "s16" for PCM codecs)."""
    import av

    buf = io.BytesIO()
    out = av.open(buf, "w", format=fmt)
    st = out.add_stream(codec, rate=rate, layout=layout)
    step = 1024
    for i in range(0, x.shape[1], step):
        blk = x[:, i:i + step]
        if sample_fmt == "s16":
            fr = av.AudioFrame.from_ndarray((blk * 32767).astype(np.int16).reshape(1, -1),
                                            format="s16", layout=layout)
        else:
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(blk), format="fltp", layout=layout)
        fr.sample_rate = rate
        fr.pts = i
        for p in st.encode(fr):
            out.mux(p)
    for p in st.encode(None):
        out.mux(p)
    out.close()
    return buf.getvalue()


def adts_tone(freq: float, amplitude: float, seconds: float = 2.0, rate: int = 44100) -> bytes:
    """``seconds`` of a sine encoded as AAC in ADTS frames (FFmpeg's native encoder)."""
    n = int(seconds * rate)
    x = (amplitude * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)
    return encode_audio(x[None, :], "adts", "aac", rate, "mono")


def adts_frames(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of each ADTS frame."""
    out, i = [], 0
    while i + 7 <= len(data):
        assert data[i] == 0xFF and data[i + 1] & 0xF0 == 0xF0, "not ADTS"
        ln = ((data[i + 3] & 0x03) << 11) | (data[i + 4] << 3) | (data[i + 5] >> 5)
        out.append((i, ln))
        i += ln
    return out


class AdtsHttpServer:
    """GET /stream.aac: the ADTS bytes looped forever at real-time pace. With ``garbage``,
    every loop after the first has that many random bytes before it (the demuxer resyncs) and
    the payload of one of its frames replaced by random bytes (the header kept, so the
    decoder gets a corrupt packet). With ``burst`` (whole loops), a connection first gets that
    many loops at once, as Icecast sends its buffered audio on connect (``burst-size``): audio
    from the past, ``burst * seconds`` before the request. ``requests`` holds the time of each
    request (before its first byte is sent)."""

    def __init__(self, data: bytes, seconds: float, garbage: int = 0, burst: int = 0) -> None:
        self.data, self.seconds, self.garbage, self.burst = data, seconds, garbage, burst
        self.requests: list[float] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(time.time())
                self.send_response(200)
                self.send_header("Content-Type", "audio/aac")
                self.end_headers()
                rng = np.random.default_rng(1)
                chunk = max(1, len(outer.data) // 20)
                loop = 0
                try:
                    if outer.burst:
                        self.wfile.write(outer.data * outer.burst)
                        self.wfile.flush()
                    while not outer.closed.is_set():
                        data = outer.data
                        if outer.garbage and loop:
                            data = bytearray(data)
                            off, ln = adts_frames(bytes(data))[len(adts_frames(data)) // 2]
                            data[off + 7:off + ln] = rng.integers(0, 256, ln - 7,
                                                                   dtype=np.uint8).tobytes()
                            data = rng.integers(0, 256, outer.garbage,
                                                dtype=np.uint8).tobytes() + bytes(data)
                        loop += 1
                        for i in range(0, len(data), chunk):
                            self.wfile.write(data[i:i + chunk])
                            self.wfile.flush()
                            time.sleep(outer.seconds * chunk / len(data))
                except OSError:
                    pass

            def log_message(self, *a) -> None:
                pass

        self.closed = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.aac"

    def close(self) -> None:
        self.closed.set()
        self.httpd.shutdown()
        self.httpd.server_close()
