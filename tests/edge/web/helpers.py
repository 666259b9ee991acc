"""Small HTTP client helpers and daemons for the web tests (real sockets, real server)."""

from __future__ import annotations

import base64
import http.client
import json
from pathlib import Path
from typing import Any



def request(port: int, path: str, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None, host: str = "127.0.0.1",
            timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection; the path is sent exactly as given."""
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.putrequest(method, path, skip_host="Host" in (headers or {}),
                     skip_accept_encoding=True)
        h = dict(headers or {})
        if body is not None:
            h.setdefault("Content-Length", str(len(body)))
        for k, v in h.items():
            c.putheader(k, v)
        c.endheaders(body)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def get_json(port: int, path: str, headers: dict[str, str] | None = None) -> Any:
    code, _, body = request(port, path, headers=headers)
    assert code == 200, (path, code, body[:300])
    return json.loads(body)


def post_json(port: int, path: str, data: Any, headers: dict[str, str] | None = None
              ) -> tuple[int, Any]:
    h = {"Content-Type": "application/json", **(headers or {})}
    code, _, body = request(port, path, "POST", json.dumps(data).encode(), h)
    return code, json.loads(body) if body else None


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


GATE = {"name": "loud", "kind": "gate", "triggers": ["level_dbfs > -20"], "cooldown": 0,
        "severity": "warning"}


def settings(tmp_path: Path, monitors: list[dict[str, Any]], **extra: Any) -> Any:
    from edge.config import load_settings

    return load_settings(data={"data_dir": str(tmp_path / "data"),
                               "streams": [{"id": "s", "source": "file", "path": "x",
                                            "labels": {"location": "test bench"}}],
                               "monitors": monitors, "alerts": {"mqtt": {"enabled": False}},
                               **extra})
