"""Webhook sink: each alert POSTed as JSON, signed, retried with backoff, from the outbox.

Request (documented in ``docs/MQTT.md`` § Webhook)::

    POST <url>
    Content-Type: application/json
    User-Agent: flamingo-edge/<version>
    X-Flamingo-Edge-Alert-Id: <alert id>
    X-Flamingo-Edge-Timestamp: <unix seconds when this attempt was signed>
    X-Flamingo-Edge-Signature-256: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

    <the alert JSON, byte-identical to the MQTT events payload; "replayed": true on a
     retry or when delivered by a later run than the one that raised it>

The receiver recomputes the HMAC over ``timestamp + "." + raw body`` with the shared
secret, compares in constant time, and may reject stale timestamps (replay guard).

Delivery: a thread reads the ``webhook`` rows of the outbox in order, one at a time.
2xx: delivered (row deleted). 3xx (redirects are never followed), 408, 429, 5xx and
network errors: retried with
exponential backoff (``backoff_initial_s`` doubling up to ``backoff_max_s``, +-20 %
jitter; a ``Retry-After`` in seconds is honoured up to ``backoff_max_s``). Other 4xx
mean the receiver will never accept this payload: the row is dropped, counted
(``fe_alerts_dropped{reason="webhook_rejected"}``) and logged. Uses only the standard
library (urllib).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import threading
import time
import urllib.error
import urllib.request

import structlog

from alerts.config import WebhookConfig
from alerts.models import as_replayed
from alerts.outbox import Outbox
from edge import __version__
from edge.metrics import Metrics

log = structlog.get_logger(__name__)

SINK = "webhook"
SIGNATURE_HEADER = "X-Flamingo-Edge-Signature-256"
TIMESTAMP_HEADER = "X-Flamingo-Edge-Timestamp"
ID_HEADER = "X-Flamingo-Edge-Alert-Id"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: urllib answers a 301/302/303 to a POST with a body-less
    GET, whose 2xx would mark an alert delivered that no receiver got. The 3xx is
    returned as an HTTPError and retried like a 5xx until the URL is fixed."""

    def redirect_request(self, *_a, **_kw):
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, header: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), header)


def _boot_of(payload: str) -> str | None:
    try:
        return json.loads(payload).get("boot_id")
    except (ValueError, AttributeError):
        return None


class WebhookSink:
    def __init__(self, config: WebhookConfig, *, outbox: Outbox, metrics: Metrics, boot_id: str | None = None) -> None:
        self._boot_id = boot_id
        self._cfg = config
        self._outbox = outbox
        self._metrics = metrics
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backoff = config.backoff_initial_s
        self.last_error: str | None = None
        self.attempts = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="webhook-sink", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float) -> None:
        """Stop after the request in progress (bounded by ``timeout_s``); pending rows stay queued."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def health(self) -> dict:
        return {"last_error": self.last_error, "pending": self._outbox.count(SINK)}

    def _run(self) -> None:
        while not self._stop.is_set():
            rows = self._outbox.pending(SINK, limit=1)
            if not rows:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            row = rows[0]
            payload = row.payload
            if row.attempts or (self._boot_id is not None and _boot_of(payload) != self._boot_id):
                payload = as_replayed(payload)  # a retry, or raised by an earlier run
            delay = self._deliver(row.row_id, row.alert_id, payload.encode())
            if delay:
                self._stop.wait(delay)

    def _deliver(self, row_id: int, alert_id: str, body: bytes) -> float:
        """One attempt; returns seconds to wait before the next one (0 after success or drop)."""
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"flamingo-edge/{__version__}",
            ID_HEADER: alert_id,
            TIMESTAMP_HEADER: ts,
        }
        if self._cfg.secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._cfg.secret.get_secret_value(), ts, body)
        req = urllib.request.Request(self._cfg.url or "", data=body, headers=headers, method="POST")
        self.attempts += 1
        retry_after: float | None = None
        try:
            with _opener.open(req, timeout=self._cfg.timeout_s) as resp:
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
            ra = e.headers.get("Retry-After") if e.headers else None
            if ra and ra.strip().isdigit():
                retry_after = float(ra.strip())
        except (urllib.error.URLError, OSError, ValueError) as e:
            status = None
            self.last_error = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        if status is not None and 200 <= status < 300:
            self._outbox.mark_sent(row_id)
            self._metrics.alerts_sent.labels(SINK).inc()
            self._backoff = self._cfg.backoff_initial_s
            self.last_error = None
            log.info("webhook delivered", alert_id=alert_id, status=status)
            return 0.0
        self._metrics.alerts_failed.labels(SINK).inc()
        if status is not None:
            self.last_error = f"HTTP {status}"
            if 300 <= status < 400:
                self.last_error += " (redirects are not followed: set alerts.webhook.url to the final URL)"
        if status is not None and 400 <= status < 500 and status not in (408, 429):
            log.error("webhook rejected alert; dropping it", alert_id=alert_id, status=status)
            self._outbox.drop(row_id, "webhook_rejected")
            return 0.0
        self._outbox.mark_failed(row_id, self.last_error or "error")
        delay = self._backoff * random.uniform(0.8, 1.2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._cfg.backoff_max_s))
        self._backoff = min(self._backoff * 2, self._cfg.backoff_max_s)
        log.warning("webhook delivery failed; will retry", alert_id=alert_id, error=self.last_error,
                    retry_in_s=round(delay, 2))
        return delay
