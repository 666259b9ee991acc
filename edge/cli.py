"""The `flamingo-edge` command line. Each area registers its own commands below."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="flamingo-edge")
def cli() -> None:
    """Listen to live audio and reason about it with Audio Flamingo 2."""


def main() -> None:
    cli()


# --- command registration (one line per area; keep imports cheap: no torch at import time) ---
from edge.ask_cli import ask as _ask  # noqa: E402

cli.add_command(_ask)
from edge.run_cli import publish_audio as _publish_audio, replay as _replay, run as _run  # noqa: E402

cli.add_command(_run)
cli.add_command(_replay)
cli.add_command(_publish_audio)

from alerts.cli import alerts as _alerts  # noqa: E402

cli.add_command(_alerts)

from trt_builders.cli import engines as _engines  # noqa: E402

cli.add_command(_engines)

from edge.model_cli import model as _model  # noqa: E402

cli.add_command(_model)

from edge.probe_cli import probe as _probe  # noqa: E402

cli.add_command(_probe)
