"""What the health report and the web API read of the running service: `RunningDaemon`.

`edge.health` and `edge.web` (pipeline stages) look at the supervisor's parts while it runs:
its streams, sources, worker, alert pipeline. They depend on this protocol, not on
`edge.daemon.Daemon` (the layer above them), and `Daemon` satisfies it structurally; mypy
checks that where the daemon hands itself over (`HealthWatcher(self)`,
`start_http_server(daemon=self)`). A new read of the daemon from health or web is a new
member here first.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # annotations only; all in this layer or below
    from alerts.pipeline import AlertPipeline
    from streams.base import Source

    from .config import Settings
    from .web.live import LiveResults
    from .worker import InferenceWorker, StreamState


class RunningDaemon(Protocol):
    """The running service as health and the web API see it (all read-only)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def data_dir(self) -> Path: ...

    @property
    def streams(self) -> Mapping[str, StreamState]: ...

    @property
    def sources(self) -> Sequence[Source]: ...

    @property
    def worker(self) -> InferenceWorker | None: ...

    @property
    def alerts_pipeline(self) -> AlertPipeline | None: ...

    @property
    def live(self) -> LiveResults | None:
        """The monitors' recent results the web page shows (None without HTTP)."""

    @property
    def model(self) -> object:
        """The AF2 model (read for its ``model_id``), or None (gate only)."""

    @property
    def started_at(self) -> float | None:
        """time.monotonic() when the daemon started, None before."""

    @property
    def stop_event(self) -> threading.Event:
        """Set once the daemon is stopping."""

    def last_frame_at(self, stream: str) -> float | None:
        """time.monotonic() of the stream's last frame, None before the first."""

    def silent_after(self, stream: str) -> float:
        """Seconds without audio after which the stream counts as silent."""

    def worker_alive(self) -> bool: ...
