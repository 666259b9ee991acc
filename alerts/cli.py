"""``flamingo-edge alerts list|show|prune``: read the alert history the daemon writes;
remove Home Assistant entities that are no longer configured.

The history is ``<data_dir>/history.sqlite3``. The data directory is the daemon's
(`edge.config.command_settings`), in order: ``--data-dir``, ``$FLAMINGO_EDGE_DATA_DIR``, the
``data_dir`` of ``--config``, or ``$XDG_DATA_HOME/flamingo-edge``. The database is opened read-only,
so this is safe while the daemon runs. Imports stay cheap (no torch, no numpy).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import click

from edge.results import printable


def _settings(config: str | None, data_dir: str | None):  # -> edge.config.Settings
    from edge.config import ConfigError, command_settings

    try:
        return command_settings(config, data_dir)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _data_dir(data_dir: str | None, config: str | None) -> Path:
    return _settings(config, data_dir).resolved_data_dir()


def _open(dd: Path):  # -> History
    from alerts.history import History

    path = dd / "history.sqlite3"
    if not path.exists():
        raise click.ClickException(f"no alert history at {path} (has the daemon run with this data dir?)")
    return History(path, readonly=True)


def _since(value: str | None) -> float | None:
    """'90m', '2h', '7d', '30s' or an ISO-8601 time."""
    if not value:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].replace(".", "", 1).isdigit():
        return time.time() - float(value[:-1]) * units[value[-1]]
    try:
        d = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter("use e.g. 30m, 2h, 7d or an ISO-8601 time", param_hint="--since") from None
    return (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).timestamp()


_common = [
    click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                 help="Daemon data directory (default: $FLAMINGO_EDGE_DATA_DIR or the daemon default)."),
    click.option("--config", type=click.Path(dir_okay=False, exists=True), default=None,
                 show_default="none", help="Take the data directory from this daemon config file."),
]


def _with_common(f):
    for opt in reversed(_common):
        f = opt(f)
    return f


@click.group("alerts")
def alerts() -> None:
    """Read the alert history (alerts raised, with their evidence clips); prune Home Assistant entities."""


@alerts.command("list")
@_with_common
@click.option("--stream", default=None, show_default="all", help="Only this stream.")
@click.option("--monitor", default=None, show_default="all", help="Only this monitor.")
@click.option("--since", default=None, show_default="any time", help="Only newer than this: 30m, 2h, 7d or an ISO time.")
@click.option("-n", "--limit", default=50, show_default=True, type=click.IntRange(1, 100000),
              help="At most this many alerts.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (the MQTT payload).")
def list_cmd(data_dir: str | None, config: str | None, stream: str | None, monitor: str | None,
             since: str | None, limit: int, as_json: bool) -> None:
    """List alerts, newest first."""
    h = _open(_data_dir(data_dir, config))
    try:
        rows = h.list_alerts(stream=stream, monitor=monitor, since=_since(since), limit=limit)
    finally:
        h.close()
    if as_json:
        for a in rows:
            click.echo(json.dumps(a, sort_keys=True))
        return
    if not rows:
        click.echo("no alerts")
        return
    click.echo(f"{'ID':8}  {'RAISED (UTC)':20}  {'STREAM':14}  {'MONITOR':14}  {'SEVERITY':8}  ANSWER")
    for a in rows:
        answer = printable(" ".join(str(a.get("answer", "")).split()))  # one terminal-safe line
        if len(answer) > 60:
            answer = answer[:57] + "..."
        raised = str(a.get("raised_at", ""))[:19].replace("T", " ")
        click.echo(f"{a['id'][:8]:8}  {raised:20}  {a['stream'][:14]:14}  {a['monitor'][:14]:14}  "
                   f"{a['severity'][:8]:8}  {answer}")


@alerts.command("show")
@_with_common
@click.argument("alert_id")
@click.option("--json", "as_json", is_flag=True, help="Print the alert payload as JSON.")
def show_cmd(data_dir: str | None, config: str | None, alert_id: str, as_json: bool) -> None:
    """Show one alert; ALERT_ID may be a unique prefix (as printed by `list`)."""
    dd = _data_dir(data_dir, config)
    h = _open(dd)
    try:
        a = h.get_alert(alert_id)
    finally:
        h.close()
    if a is None:
        raise click.ClickException(f"no single alert matches {alert_id!r}")
    if as_json:
        click.echo(json.dumps(a, indent=2, sort_keys=True))
        return
    fields = ["id", "raised_at", "stream", "monitor", "severity", "verdict", "question", "answer", "choice",
              "start", "end", "level_dbfs", "model_id", "latency_s", "boot_id", "seq", "schema_version"]
    for k in fields:
        if a.get(k) is not None:  # free text (a model's answer) as one terminal-safe line
            click.echo(f"{k + ':':16}{printable(str(a[k]))}")
    for k in ("clip_flac", "clip_png"):
        if a.get(k):
            p = dd / "clips" / a[k]
            click.echo(f"{k + ':':16}{p}{'' if p.exists() else '  (deleted by retention)'}")


@alerts.command("prune")
@click.option("--config", "config", type=click.Path(dir_okay=False, exists=True), required=True,
              help="The daemon config: its monitors are kept, its MQTT settings are used.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Daemon data directory (default: the config's).")
@click.option("--all", "remove_all", is_flag=True, help="Remove every entity this node announced (uninstall).")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
def prune_cmd(config: str, data_dir: str | None, remove_all: bool, dry_run: bool) -> None:
    """Remove from Home Assistant the entities of monitors and streams no longer configured.

    Publishes an empty retained discovery config for each (the daemon does the same at
    start). Safe while the daemon runs."""
    from alerts.prune import PruneError, prune

    st = _settings(config, data_dir)
    dd = st.resolved_data_dir()
    if not (dd / "history.sqlite3").exists():
        raise click.ClickException(f"no history at {dd / 'history.sqlite3'} (has the daemon run with this data dir?)")
    configured = {} if remove_all else {s.id: [m.name for m in st.monitors_for(s.id)] for s in st.streams}
    scored = {s.id: [m.name for m in st.monitors_for(s.id) if m.has_score] for s in st.streams}
    try:
        gone = prune(st.alerts, dd, configured, dry_run=dry_run, scored=scored)
    except PruneError as e:
        raise click.ClickException(str(e)) from None
    if not gone:
        click.echo("nothing to remove")
    for entity, topic in gone:
        what = f"{entity.stream}/{entity.monitor}" if entity.monitor else entity.stream
        click.echo(f"{'would remove' if dry_run else 'removed'} {entity.component} {what}  ({topic})")
