"""Logging for the daemon: structlog, JSON lines in production, console in a terminal.

Call `configure_logging()` once at start-up. Both structlog loggers and the standard
library (``logging.getLogger``: paho, urllib3, ...) go through the same processors, so
every line is rendered the same way and passes the redaction processor.

Logger names follow one rule: a module logs through ``structlog.get_logger(__name__)`` (or
``logging.getLogger(__name__)``), so a line's ``logger`` field is the module that wrote it
(``alerts.mqtt_sink``, ``streams.mqtt``, ``edge.scheduler``); a purpose-specific child adds a
suffix to it (``edge.daemon.results``).

Redaction (`redact_event`) guarantees, for every line:

* values of keys that look like credentials (password, passwd, secret, token, api_key,
  authorization, credential, private_key, ...) are replaced by ``"***"``, at any depth;
* in all strings (messages, exception text, pydantic ``ValidationError`` renderings):
  ``key=value`` / ``'key': 'value'`` / ``"key": "value"`` pairs with such keys,
  ``user:password@`` in URLs and ``Bearer``/``Basic`` credentials are masked;
* every secret value registered with `register_secret` (the daemon registers each
  secret of its config at start-up) is masked wherever it appears.

`format_validation_error` renders a pydantic ``ValidationError`` without the
offending input values, for config error messages shown to the operator.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Iterable
from typing import Any, Literal, TextIO

import structlog

MASK = "***"
_KEY = r"(?:[\w-]*(?:pass(?:word|wd|phrase)?|secret|token|api[_-]?key|auth(?:orization)?|credential|private[_-]?key|cookie)[\w-]*)"
_SENSITIVE_KEY = re.compile(rf"^{_KEY}$", re.IGNORECASE)
# keys that name a secret whatever the value's type (a numeric password is still a password)
_STRONG_KEY = re.compile(r"pass(?:word|wd|phrase)?|secret|api[_-]?key|credential|private[_-]?key|cookie", re.IGNORECASE)
_PATTERNS = [
    # (first) Authorization: Bearer xyz / Basic xyz
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"), rf"\1 {MASK}"),
    # password/secret-like key=value: masked even when the value is a number (a PIN)
    (re.compile(r"(?i)(\b[\w-]*(?:pass(?:word|wd|phrase)|secret|api[_-]?key|credential|private[_-]?key)[\w-]*"
                r"\s*[=:]\s*)(?!['\"])(?=[-+]?\d)([^\s,;)}\]]+)"), rf"\1{MASK}"),
    # key=value, key: value (unquoted, up to whitespace/comma/bracket)
    # (plain numbers are left alone: `tokens_per_second=41.5` is not a secret)
    (re.compile(rf"(?i)(\b{_KEY}\s*[=:]\s*)(?!['\"])(?![-+]?\d+(?:\.\d+)?(?:[\s,;)}}\]]|$))([^\s,;)}}\]]+)"),
     rf"\1{MASK}"),
    # 'key': 'value' / "key": "value" / key='value' (dict reprs, JSON, pydantic input_value)
    (re.compile(rf"(?i)(['\"]?\b{_KEY}['\"]?\s*[=:]\s*)(['\"])(?:\\.|(?!\2).)*\2"), rf"\1\2{MASK}\2"),
    # scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@"), rf"\1{MASK}@"),
]

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(*values: str | None) -> None:
    """Mask these exact values in every later log line (ignores empty and very short values)."""
    with _secrets_lock:
        for v in values:
            if v and len(v) >= 3:
                _secrets.add(v)


def clear_secrets() -> None:
    with _secrets_lock:
        _secrets.clear()


def redact_text(s: str) -> str:
    with _secrets_lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for v in secrets:
        if v in s:
            s = s.replace(v, MASK)
    for pat, rep in _PATTERNS:
        s = pat.sub(rep, s)
    return s


def _secret_like(key: str, v: Any) -> bool:
    """Whether the value under a credential-like key is masked. Containers are searched
    key by key instead; under token/auth-like keys numbers stay readable, so
    ``token_ids=[1, 2]`` or ``max_new_tokens=64`` are kept; under password/secret-like
    keys everything but None and "" is masked."""
    if v is None or v == "" or isinstance(v, (dict, list, tuple, set)):
        return False
    if _STRONG_KEY.search(key):
        return True
    return not isinstance(v, (bool, int, float))


def _redact(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            k: (MASK if isinstance(k, str) and _SENSITIVE_KEY.match(k) and _secret_like(k, v) else _redact(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple, set)):
        return type(value)(_redact(v, depth + 1) for v in value) if not isinstance(value, set) else [
            _redact(v, depth + 1) for v in value
        ]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    # Anything else (exceptions, paths, pydantic models) is rendered to text first, then masked.
    return redact_text(str(value))


def redact_event(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask credentials in keys, values and text. Run it last before rendering."""
    return _redact(event_dict)


def format_validation_error(exc: Exception) -> str:
    """A pydantic ``ValidationError`` as text, without any input values (they may be secrets)."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return redact_text(str(exc))
    lines = []
    for e in errors(include_input=False, include_url=False):
        loc = ".".join(str(p) for p in e.get("loc", ())) or "<root>"
        lines.append(f"{loc}: {e.get('msg', 'invalid')}")
    return redact_text("; ".join(lines))


def configure_logging(
    level: str | int = "INFO",
    fmt: Literal["auto", "json", "console"] = "auto",
    stream: TextIO | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Route structlog and stdlib logging to ``stream`` (stderr by default).

    ``fmt="auto"`` picks the console renderer when ``stream`` is a TTY, JSON lines
    otherwise (journald, files, pipes)."""
    stream = stream or sys.stderr
    register_secret(*secrets)
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    lvl = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if fmt == "json":
        # exception text is rendered before redaction so tracebacks are masked too
        tail: list[Any] = [structlog.processors.format_exc_info, redact_event]
        renderer = structlog.processors.JSONRenderer(default=str)
    else:
        tail = [structlog.processors.format_exc_info, redact_event]
        renderer = structlog.dev.ConsoleRenderer(colors=getattr(stream, "isatty", lambda: False)())
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tail, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.set_name("flamingo-edge")
    root = logging.getLogger()
    for h in list(root.handlers):
        if h.get_name() == "flamingo-edge":
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(lvl)
