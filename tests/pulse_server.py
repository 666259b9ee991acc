"""A private PulseAudio server for microphone tests: a null sink whose monitor is the mic.

    with PulseServer(tmp_path) as pa:     # sets PULSE_SERVER for this process
        pa.play(wav)                      # paplay into the null sink: the mic hears it
        pa.kill(); pa.start()             # the device vanishes and returns

The `mic` source reads PortAudio's ALSA ``pulse`` device (Debian `libasound2-plugins`), which
talks to this server through ``PULSE_SERVER``. PortAudio lists devices when it initialises, so
the first `start` re-initialises sounddevice once the server is up.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

PULSEAUDIO = shutil.which("pulseaudio") or "/usr/bin/pulseaudio"
PAPLAY = shutil.which("paplay") or "/usr/bin/paplay"
PACTL = shutil.which("pactl") or "/usr/bin/pactl"
PACAT = shutil.which("pacat") or "/usr/bin/pacat"  # paplay's own binary (pulseaudio-utils)


def available() -> str | None:
    """None when a private server can be run here, else why not."""
    for exe in (PULSEAUDIO, PAPLAY, PACTL):
        if not Path(exe).exists():
            return f"{exe} missing (apt-get install pulseaudio pulseaudio-utils)"
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError) as e:
        return f"sounddevice/PortAudio unavailable: {e}"
    return None


class PulseServer:
    def __init__(self, root: Path, rate: int = 16000) -> None:
        self.root = Path(root) / "pulse"
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket = self.root / "native"
        self.rate = rate
        self.proc: subprocess.Popen | None = None
        self.env = dict(os.environ, HOME=str(self.root), XDG_RUNTIME_DIR=str(self.root),
                        PULSE_SERVER=f"unix:{self.socket}")
        (self.root / "default.pa").write_text(
            f"load-module module-native-protocol-unix socket={self.socket} auth-anonymous=1\n"
            f"load-module module-null-sink sink_name=fe_null rate={rate} channels=1\n"
            "set-default-sink fe_null\nset-default-source fe_null.monitor\n")
        self._saved: dict[str, str | None] = {}

    def start(self, timeout: float = 10.0) -> PulseServer:
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [PULSEAUDIO, "-n", "-F", str(self.root / "default.pa"), "--daemonize=no",
             "--exit-idle-time=-1", "--use-pid-file=no", "--system=no", "--log-target=stderr"],
            env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.root / "log.txt", "ab"))  # noqa: SIM115 - the daemon writes it for its lifetime
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = subprocess.run([PACTL, "info"], env=self.env, check=False, capture_output=True)
            if r.returncode == 0:
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"pulseaudio exited: {self.log()[-2000:]}")
            time.sleep(0.05)
        else:
            raise RuntimeError(f"pulseaudio did not come up: {self.log()[-2000:]}")
        for k in ("PULSE_SERVER", "HOME", "XDG_RUNTIME_DIR"):
            self._saved.setdefault(k, os.environ.get(k))
            os.environ[k] = self.env[k]
        import sounddevice as sd

        if not any(d["name"] == "pulse" for d in sd.query_devices()):
            # PortAudio lists devices when it initialises: let it see "pulse" (only when it
            # does not yet, so a restart does not pull PortAudio from under open streams)
            sd._terminate()
            sd._initialize()
        return self

    def kill(self) -> None:
        """The device vanishes: SIGKILL, no goodbye to clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        self._saved.clear()

    def play(self, path: Path, wait: bool = True) -> subprocess.Popen:
        p = subprocess.Popen([PAPLAY, "--device=fe_null", str(path)], env=self.env)
        if wait:
            p.wait(30)
        return p

    def log(self) -> str:
        p = self.root / "log.txt"
        return p.read_text(errors="replace") if p.exists() else ""

    def __enter__(self) -> PulseServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
