"""One logging scheme everywhere (issue 12 item 9): a module logs through
``structlog.get_logger(__name__)`` with a constant event name and key/value fields, never a
preformatted message (``%s`` arguments, f-strings), so every line can be filtered by its
fields and the event names are stable."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("edge", "streams", "alerts", "trt_builders")
LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}


def _log_calls(tree: ast.AST):
    """Calls like ``log.info(...)`` / ``self.log.warning(...)``."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in LEVELS):
            continue
        owner = node.func.value
        if (isinstance(owner, ast.Name) and owner.id in ("log", "logger", "_log")) or (
                isinstance(owner, ast.Attribute) and owner.attr in ("log", "_log")):
            yield node


def test_every_log_call_has_a_constant_event_and_key_value_fields():
    bad = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for call in _log_calls(tree):
                where = f"{path.relative_to(ROOT)}:{call.lineno}"
                if not call.args:
                    continue
                first = call.args[0]
                if len(call.args) > 1:
                    bad.append(f"{where}: positional %-arguments")
                elif isinstance(first, ast.JoinedStr):
                    bad.append(f"{where}: f-string event")
                elif isinstance(first, ast.Constant) and isinstance(first.value, str) and "%" in first.value:
                    bad.append(f"{where}: %-placeholder in the event")
    assert not bad, "\n".join(bad)


def test_modules_log_under_their_own_name_through_structlog():
    bad = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            text = path.read_text()
            rel = path.relative_to(ROOT)
            if rel.as_posix() == "edge/log.py":
                continue  # configures the standard library's root logger
            if "logging.getLogger(" in text:
                bad.append(f"{rel}: logging.getLogger (use structlog.get_logger(__name__))")
            for line in text.splitlines():
                if "get_logger(" in line and "get_logger(__name__" not in line and \
                        "get_logger(f\"{__name__}" not in line and "def " not in line:
                    bad.append(f"{rel}: {line.strip()}")
    assert not bad, "\n".join(bad)
