"""The web server's security rules (edge/http.py): loopback by default, a credential on every
request when one is configured, no start beyond loopback without one, secrets never in a
response or a log line, clip paths inside the clip store, bounded request sizes and rates."""

from __future__ import annotations

import json
import os
import time

import pytest
from click.testing import CliRunner

from edge.cli import cli
from edge.config import ConfigError, HttpConfig, load_settings
from edge.daemon import Daemon
from edge.http import Credential, RateLimiter, start_http_server
from edge.metrics import Metrics
from streams.file import FileSource

from ..recordings import recording
from .helpers import GATE, basic, get_json, post_json, request, settings

TOKEN = "s3cret-t0ken-for-tests"
PATHS = ["/", "/metrics", "/healthz", "/api/streams", "/api/monitors", "/api/alerts",
         "/api/health", "/api/events", "/static/app.js", "/api/clips/x.flac", "/nope"]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A model-free daemon that played a recording with one alert, bound to 0.0.0.0 with a
    token and basic-auth user/password configured."""
    tmp = tmp_path_factory.mktemp("sec")
    rec = recording(tmp / "r.wav", seconds=30, loud=(10, 20))
    s = settings(tmp, [GATE], http={"host": "0.0.0.0", "port": 0, "token": TOKEN,
                                    "username": "site", "password": "pw-for-the-site"})
    d = Daemon(s, sources=[FileSource(rec, "s", speed=0)], lossless=True)
    d.start()
    try:
        assert d.run(timeout=60)
        deadline = time.time() + 10
        while d.alerts_pipeline.history.count("alerts") < 1 and time.time() < deadline:
            time.sleep(0.05)
        yield d, d.http_endpoint.port
    finally:
        d.stop()


BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("path", PATHS)
def test_every_request_needs_the_credential_loopback_clients_included(guarded, path):
    _, port = guarded
    code, h, _ = request(port, path)
    assert code == 401 and h["www-authenticate"].startswith("Basic realm=")
    assert request(port, path, headers={"Authorization": "Bearer wrong-token-xxxx"})[0] == 401
    assert request(port, path, headers=basic("site", "wrong"))[0] == 401
    assert request(port, path, headers=basic("site", TOKEN[:-1]))[0] == 401
    assert request(port, path, headers={"Authorization": "Basic %%%"})[0] == 401


def test_token_or_user_and_password_open_it(guarded):
    _, port = guarded
    for creds in (BEARER, basic("anyone", TOKEN), basic("site", "pw-for-the-site")):
        assert request(port, "/api/streams", headers=creds)[0] == 200
    assert request(port, "/api/streams", headers=basic("other", "pw-for-the-site"))[0] == 401


def test_ask_now_needs_the_credential_even_from_loopback(guarded):
    _, port = guarded
    assert post_json(port, "/api/ask", {"stream": "s", "question": "q?"})[0] == 401
    code, body = post_json(port, "/api/ask", {"stream": "s", "question": "q?"}, headers=BEARER)
    assert code == 503 and body["reason"] == "no_model"  # through; this daemon has no model


def test_no_secret_in_any_response(guarded, log_capture):
    d, port = guarded
    seen = b""
    for path in ["/", "/metrics", "/healthz", "/api/streams", "/api/monitors", "/api/alerts",
                 "/api/health", "/static/app.js"]:
        code, h, body = request(port, path, headers=BEARER)
        assert code == 200, path
        seen += body + json.dumps(h).encode()
    for a in get_json(port, "/api/alerts", BEARER)["alerts"]:
        seen += json.dumps(get_json(port, f"/api/alerts/{a['id']}", BEARER)).encode()
    seen += request(port, "/api/ask", "POST", b"{}", {**BEARER, "Content-Type": "application/json"})[2]
    for secret in (TOKEN, "pw-for-the-site"):
        assert secret.encode() not in seen
    ep = start_http_server(0, Metrics(), host="127.0.0.1", config=d.settings.http)  # logs its start
    ep.stop()
    logs = log_capture.getvalue()
    assert "http endpoint listening" in logs and TOKEN not in logs and "pw-for-the-site" not in logs


def test_beyond_loopback_without_a_credential_refuses_to_start_in_one_line():
    with pytest.raises(ConfigError) as e:
        load_settings(data={"http": {"host": "0.0.0.0"}})
    (line,) = e.value.problems
    assert "http.host" in line and "http.token" in line
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.53"):
        assert load_settings(data={"http": {"host": host}}).http.host == host
    load_settings(data={"http": {"host": "0.0.0.0", "token": TOKEN}})
    load_settings(data={"http": {"host": "0.0.0.0", "enabled": False}})  # off: nothing binds
    with pytest.raises(ValueError, match="http.token"):
        start_http_server(0, Metrics(), host="0.0.0.0")
    with pytest.raises(ConfigError, match="together"):
        load_settings(data={"http": {"username": "u"}})


def test_run_refuses_to_start_beyond_loopback_without_a_credential(tmp_path):
    env = {"FLAMINGO_EDGE_HTTP__HOST": "0.0.0.0"}
    res = CliRunner().invoke(cli, ["run", "--speed", "0", "--data-dir", str(tmp_path)], env=env)
    assert res.exit_code != 0
    lines = [x for x in res.output.splitlines() if "http" in x]
    assert len(lines) == 1 and "http.token" in lines[0] and "http.host" in lines[0]
    assert os.environ.get("FLAMINGO_EDGE_HTTP__HOST") is None


def test_the_credential_is_never_logged(tmp_path):
    env = {"FLAMINGO_EDGE_HTTP__TOKEN": TOKEN, "FLAMINGO_EDGE_HTTP__HOST": "0.0.0.0"}
    rec = recording(tmp_path / "r.wav", seconds=20, loud=(0, 10))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"streams: [{{id: s, source: file, path: {rec}, speed: 0}}]\n"
                   "monitors: [{name: loud, kind: gate, triggers: ['level_dbfs > -20']}]\n"
                   "alerts: {mqtt: {enabled: false}}\n")
    res = CliRunner().invoke(cli, ["run", "--config", str(cfg), "--data-dir", str(tmp_path),
                                   "--log-format", "json", "--log-level", "DEBUG"], env=env)
    assert res.exit_code == 0, res.output
    assert "http endpoint listening" in res.output and TOKEN not in res.output


def test_bound_to_loopback_other_host_names_and_cross_origin_writes_are_refused(tmp_path):
    rec = recording(tmp_path / "r.wav", seconds=20, loud=(0, 10))
    s = settings(tmp_path, [GATE], http={"port": 0})
    d = Daemon(s, sources=[FileSource(rec, "s", speed=0)], lossless=True)
    d.start()
    try:
        port = d.http_endpoint.port
        assert request(port, "/api/streams")[0] == 200  # loopback, no credential configured
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            assert request(port, "/api/streams", headers={"Host": host})[0] == 200
        for host in ("attacker.example", f"attacker.example:{port}", "10.0.0.1", ""):
            assert request(port, "/api/streams", headers={"Host": host})[0] == 421
        q = json.dumps({"stream": "s", "question": "q?"}).encode()
        code, _, _ = request(port, "/api/ask", "POST", q, {"Content-Type": "application/json",
                                                           "Origin": "http://attacker.example"})
        assert code == 403
        assert request(port, "/api/ask", "POST", q, {"Content-Type": "text/plain"})[0] == 415
        code, _, body = request(port, "/api/ask", "POST", q, {
            "Content-Type": "application/json", "Origin": f"http://127.0.0.1:{port}"})
        assert code == 503 and json.loads(body)["reason"] == "no_model"  # same origin: through
        big = b'{"stream": "s", "question": "' + b"x" * 20000 + b'"}'
        assert request(port, "/api/ask", "POST", big, {"Content-Type": "application/json"})[0] == 413
    finally:
        d.stop()


@pytest.mark.parametrize("path", [
    "/api/clips/../history.sqlite3", "/api/clips/%2e%2e/history.sqlite3",
    "/api/clips/..%2fhistory.sqlite3", "/api/clips/%2e%2e%2fhistory.sqlite3",
    "/api/clips//etc/passwd", "/api/clips/%2fetc%2fpasswd", "/api/clips/..%5chistory.sqlite3",
    "/api/clips/./x.flac", "/api/clips/escape/out.flac", "/api/clips/escape.flac",
    "/api/clips/%00.flac", "/api/clips/", "/api/clips/today/../../outbox.sqlite3",
])
def test_clip_paths_cannot_escape_the_clip_store(guarded, path):
    d, port = guarded
    root = d.alerts_pipeline.clips.root
    outside = root.parent / "secret.flac"
    outside.write_bytes(b"fLaC not yours")
    for link, target in (("escape", root.parent), ("escape.flac", outside)):
        if not (root / link).is_symlink():
            (root / link).symlink_to(target)
    (root.parent / "out.flac").write_bytes(b"fLaC not yours either")
    code, _, body = request(port, path, headers=BEARER)
    assert code in (404, 400) and b"not yours" not in body and b"SQLite" not in body


def test_a_clip_inside_the_store_is_served(guarded):
    _, port = guarded
    (a,) = get_json(port, "/api/alerts", BEARER)["alerts"]
    code, _, body = request(port, a["clip_url"], headers=BEARER)
    assert code == 200 and body[:4] == b"fLaC"


def test_rates_are_bounded_per_client(tmp_path):
    t = [0.0]
    lim = RateLimiter(rate=2.0, burst=3, clock=lambda: t[0])
    assert [lim.allow("a") for _ in range(4)] == [True, True, True, False]
    assert lim.allow("b")  # another client has its own bucket
    t[0] += 0.5
    assert lim.allow("a") and not lim.allow("a")
    cfg = HttpConfig(port=0, rate=1.0, burst=5)
    ep = start_http_server(0, Metrics(), host="127.0.0.1", config=cfg)
    try:
        codes = [request(ep.port, "/healthz")[0] for _ in range(8)]
        assert codes[:5] == [200] * 5 and codes[-1] == 429
        code, h, _ = request(ep.port, "/healthz")
        assert code == 429 and h["retry-after"] == "1"
    finally:
        ep.stop()


def test_credential_parsing():
    c = Credential(token="tok-123456", username="u", password="p")
    assert c.accepts("Bearer tok-123456") and c.accepts("bearer  tok-123456 ")
    assert c.accepts(basic("x", "tok-123456")["Authorization"])
    assert c.accepts(basic("u", "p")["Authorization"])
    for bad in (None, "", "Bearer", "Bearer tok-12345", "Token tok-123456",
                basic("u", "x")["Authorization"], "Basic dQ==", "Basic ////"):
        assert not c.accepts(bad), bad
    assert not Credential(username="u", password="p").accepts("Bearer p")
