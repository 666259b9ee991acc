"""Every option of every command says what it does and what it defaults to (issue 12 item 11)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from edge.cli import cli


def _commands(cmd: click.Command, path: tuple[str, ...] = ()):
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))
    else:
        yield path, cmd


COMMANDS = list(_commands(cli))


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_option_has_help_and_shows_its_default(path, cmd):
    res = CliRunner().invoke(cli, [*path, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    for p in cmd.params:
        if not isinstance(p, click.Option) or p.hidden:
            continue
        assert p.help, f"{' '.join(path)} {p.opts[0]}: no help text"
        if p.is_flag or p.required:
            continue
        # the rendered line of this option carries "[default: ...]" or says "default:" itself
        ctx = click.Context(cmd, parent=click.Context(cli, **cli.context_settings))
        line = " ".join(p.get_help_record(ctx)[1].split())
        assert "default" in line.lower(), f"{' '.join(path)} {p.opts[0]}: default not shown: {line}"
        assert line in text


def test_log_level_is_a_choice_and_password_env_is_the_daemons():
    res = CliRunner().invoke(cli, ["run", "--log-level", "LOUD"])
    assert res.exit_code == 2 and "LOUD" in res.output and "debug" in res.output.lower()
    pub = cli.commands["publish-audio"]
    opt = next(p for p in pub.params if p.name == "password_env")
    assert opt.default == "FLAMINGO_EDGE_MQTT__PASSWORD"  # the variable the daemon reads


def test_engines_cache_dir_defaults_to_the_daemons(tmp_path, monkeypatch):
    """`engines info` looks where the daemon builds: <data_dir>/engines."""
    monkeypatch.setenv("FLAMINGO_EDGE_DATA_DIR", str(tmp_path / "data"))
    res = CliRunner().invoke(cli, ["engines", "info"])
    assert res.exit_code == 0, res.output
    assert f"cache {tmp_path / 'data' / 'engines'}" in res.output
