"""The page in a real browser (headless Chromium driven by Selenium through Debian's
chromedriver; nothing is downloaded) against the real daemon: `flamingo-edge run` playing the
embedded demo with the fixture AF2 model. A missing browser fails these tests, never skips them.

The screenshot is written to ``test-artifacts/web-page.png`` (or ``$FE_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FIXTURE

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[3]
TOKEN = "browser-test-token-123"


class DaemonProcess:
    """`python -m edge run ...` with JSON logs; ``port`` from its 'http endpoint listening'."""

    def __init__(self, args: list[str], env: dict[str, str], data_dir: Path) -> None:
        self.lines: list[dict] = []
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
                    "FLAMINGO_EDGE_HTTP__PORT": "0", **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "run", "--data-dir", str(data_dir), "--log-format",
             "json", *args], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, cwd=ROOT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                self.lines.append({"event": line.rstrip()})

    def port(self, timeout: float = 120) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for e in list(self.lines):
                if e.get("event") == "http endpoint listening":
                    return int(e["port"])
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"daemon did not serve: {self.lines[-20:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def daemons(tmp_path_factory) -> Iterator[tuple[int, int]]:
    """The demo at 16x, looping: with the fixture model on loopback (no credential), and
    model-free bound to 0.0.0.0 with a token. Both start at once (the model load overlaps)."""
    base = tmp_path_factory.mktemp("browser")
    demo = DaemonProcess(["--speed", "16", "--loop", "--model", str(FIXTURE / "checkpoint")],
                         {}, base / "demo")
    guarded = DaemonProcess(["--speed", "16", "--loop"],
                            {"FLAMINGO_EDGE_HTTP__HOST": "0.0.0.0",
                             "FLAMINGO_EDGE_HTTP__TOKEN": TOKEN}, base / "guarded")
    try:
        yield demo.port(), guarded.port()
    finally:
        demo.stop()
        guarded.stop()
    for p in (demo, guarded):
        assert not any(TOKEN in json.dumps(e) for e in p.lines)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: the browser tests need Debian's chromium "
                    "and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1400,1700", "--mute-audio", "--no-first-run",
              "--disable-background-networking", "--disable-component-update"):
        opts.add_argument(a)
    # the explicit driver path keeps Selenium Manager from looking for (downloading) one
    d = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    d.set_page_load_timeout(30)
    try:
        yield d
    finally:
        d.quit()


def wait_for(driver, script: str, timeout: float = 60, what: str = "") -> object:
    end = time.monotonic() + timeout
    value = None
    while time.monotonic() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what or script}: last {value!r}")


def artifacts() -> Path:
    p = Path(os.environ.get("FE_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    p.mkdir(parents=True, exist_ok=True)
    return p


CARD = 'document.querySelector(\'.card[data-stream="machine-room"]\')'
POINTS = f"return Number(({CARD} || {{querySelector: () => null}}).querySelector('.chart')?.dataset.points || 0)"


def test_the_page_shows_the_demo_live_and_answers_a_question(daemons, browser):
    port = daemons[0]
    browser.get(f"http://127.0.0.1:{port}/")
    wait_for(browser, f"return {CARD} !== null && document.body.dataset.ready === '1'", 30,
             "the stream card")
    p0 = browser.execute_script(POINTS)
    wait_for(browser, POINTS + f" > {p0}", 30, "the level chart to advance")
    assert browser.execute_script(f"return {CARD}.querySelectorAll('.strip span').length") > 0
    # an alert with a spectrogram that loaded and an audio element whose source loaded
    wait_for(browser, """return [...document.querySelectorAll('.alert')].some(a => {
        const img = a.querySelector('img.spectrogram'), au = a.querySelector('audio');
        return img && img.complete && img.naturalWidth > 0 && au && au.readyState >= 1; })""",
             60, "an alert with its spectrogram and audio")
    # a scored monitor's score chart has points, with the threshold drawn
    wait_for(browser, """const c = document.querySelector('.card[data-monitor="machine-room/knocking"] .chart');
        return c && Number(c.dataset.points) > 0""", 60, "the knocking monitor's score chart")
    # ask now: through the worker's queue, an answer with the scores
    browser.find_element("id", "ask-question").send_keys("Is there knocking?")
    browser.execute_script("document.getElementById('ask-answer').value = 'yes_no'")
    browser.find_element("id", "ask-go").click()
    wait_for(browser, "return document.getElementById('ask-result').dataset.answered === '1'", 60,
             "the answer")
    text = browser.find_element("id", "ask-result").text
    assert ("yes" in text or "no" in text) and "machine-room" in text
    assert browser.execute_script("return document.getElementById('health').textContent").startswith("health ok")
    assert browser.execute_script("return document.getElementById('conn').textContent") == "live"
    browser.execute_script("window.scrollTo(0, 0)")
    shot = artifacts() / "web-page.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10000
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


def test_bound_beyond_loopback_the_page_needs_the_credential(daemons, browser):
    port = daemons[1]
    url = f"http://127.0.0.1:{port}/"
    browser.get(url)
    nav = "return performance.getEntriesByType('navigation')[0].responseStatus"
    assert browser.execute_script(nav) == 401
    assert browser.execute_script("return document.querySelector('.card') === null")
    # a script on the page gets nothing either (Chromium turns the 401 challenge into an error)
    got = browser.execute_script("return fetch('/api/streams').then(r => r.ok, () => false)")
    assert got is False
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders",
                            {"headers": {"Authorization": f"Bearer {TOKEN}"}})
    try:
        browser.get(url)
        wait_for(browser, f"return {CARD} !== null", 30, "the stream card with the credential")
        p0 = browser.execute_script(POINTS)
        wait_for(browser, POINTS + f" > {p0}", 30, "live updates with the credential")
        assert browser.execute_script(nav) == 200
    finally:
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
