"""Every counter of the daemon, in one prometheus-client registry.

Stages import the metric objects they update from here; the `/metrics` endpoint serves
`REGISTRY`. Tests make a fresh `Metrics()` so counts never leak between tests.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        # --- ingest (streams/) ---
        self.frames_in = Counter("fe_frames_in", "Audio frames accepted", ["stream"], registry=r)
        self.samples_in = Counter("fe_samples_in", "Audio samples accepted", ["stream"], registry=r)
        self.frames_dropped = Counter(
            "fe_frames_dropped", "Audio frames rejected or dropped", ["stream", "reason"], registry=r
        )
        self.gap_samples = Counter(
            "fe_gap_samples", "Samples of silence inserted for gaps", ["stream"], registry=r
        )
        self.source_overflows = Counter(
            "fe_source_overflows", "Source callback queue overflows", ["stream"], registry=r
        )
        self.source_reopens = Counter(
            "fe_source_reopens", "Times a source was reopened", ["stream"], registry=r
        )
        self.timeline_pieces = Counter(
            "fe_timeline_pieces", "New timeline pieces (breaks, clock steps, drift corrections)",
            ["stream", "cause"], registry=r,
        )
        self.clock_untrusted = Counter(
            "fe_clock_untrusted", "Frames whose capture time was too far from this machine's clock",
            ["stream"], registry=r,
        )
        self.source_up = Gauge(
            "fe_source_up", "1 while a network source is receiving audio", ["stream"], registry=r
        )
        self.source_errors = Counter(
            "fe_source_errors", "Network source failures (auth, not_found, no_audio, stall, "
            "network, eof, error)", ["stream", "reason"], registry=r,
        )
        self.source_corrupt = Counter(
            "fe_source_corrupt_packets", "Corrupt packets counted and skipped", ["stream"], registry=r
        )
        self.source_lost_samples = Counter(
            "fe_source_lost_samples", "16-kHz samples a network source's own timestamps (RTP) "
            "say were lost: a jump forward, placed as a gap", ["stream"], registry=r,
        )
        self.source_dropped_samples = Counter(
            "fe_source_dropped_samples", "16-kHz samples a network source dropped: audio behind "
            "its timestamps already placed (duplicates, a jump back)", ["stream"], registry=r,
        )
        # --- encoding (edge/) ---
        self.clips_encoded = Counter("fe_clips_encoded", "Clips encoded", ["stream"], registry=r)
        # reason: behind (encoding fell behind real time), overwritten (left the ring before
        # it was read), encoder_error (the encoder raised), shutdown (pending at the drain deadline)
        self.clips_dropped = Counter(
            "fe_clips_dropped", "Clips not encoded, by reason", ["stream", "reason"], registry=r
        )
        self.encode_latency = Histogram(
            "fe_encode_seconds", "Wall time of one batched encode call", registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
        )
        self.clips_gap = Counter(
            "fe_clips_gap", "Clips that were all gap silence: not encoded, masked in windows",
            ["stream"], registry=r,
        )
        self.clips_behind = Gauge(
            "fe_clips_behind", "Complete clips waiting to be encoded", ["stream"], registry=r
        )
        self.stream_silent = Gauge(
            "fe_stream_silent", "1 while no audio arrived on the stream for its silent_after",
            ["stream"], registry=r,
        )
        self.stream_frame_age = Gauge(
            "fe_stream_last_frame_age_seconds", "Seconds since the stream's last audio frame "
            "(NaN before the first)", ["stream"], registry=r,
        )
        self.stream_state = Gauge(
            "fe_stream_state", "1 for the stream's current state (starting, live, silent, "
            "reconnecting, ended; edge/health.py)", ["stream", "state"], registry=r,
        )
        self.level_dbfs = Gauge("fe_level_dbfs", "Level of the last clip", ["stream"], registry=r)
        self.novelty = Gauge("fe_novelty", "Novelty score of the last clip", ["stream"], registry=r)
        # --- queries (monitors) ---
        self.query_latency = Histogram(
            "fe_query_seconds", "Wall time of one monitor query", ["monitor"], registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
        )
        self.queries = Counter("fe_queries", "Monitor queries run", ["stream", "monitor"], registry=r)
        self.queries_missed = Counter(
            "fe_queries_missed", "Monitor queries not run: past their deadline, no audio, or "
            "abandoned at shutdown", ["stream", "monitor"],
            registry=r,
        )
        self.queries_failed = Counter(
            "fe_queries_failed", "Monitor queries lost to an error (encoder or model)",
            ["stream", "monitor"], registry=r,
        )
        self.results_dropped = Counter(
            "fe_results_dropped", "Monitor results built after the shutdown drain deadline and "
            "not passed on to the sinks (queries abandoned then count as fe_queries_missed)",
            ["stream", "monitor", "reason"],
            registry=r,
        )
        self.monitor_score = Gauge(
            "fe_monitor_score", "Latest score (probability 0-1) of a scored monitor",
            ["stream", "monitor"], registry=r,
        )
        self.tokens_per_second = Gauge(
            "fe_decode_tokens_per_second", "Decode speed of the last query", registry=r
        )
        # --- alerts (alerts/) ---
        self.alerts_queued = Gauge("fe_alerts_queued", "Alerts in the outbox not yet sent", registry=r)
        self.alerts_sent = Counter("fe_alerts_sent", "Alerts acknowledged by a sink", ["sink"], registry=r)
        self.alerts_failed = Counter(
            "fe_alerts_failed", "Alert deliveries that failed", ["sink"], registry=r
        )
        self.alerts_dropped = Counter(
            "fe_alerts_dropped", "Alerts dropped by outbox bounds", ["reason"], registry=r
        )
        self.mqtt_connected = Gauge("fe_mqtt_connected", "1 while the MQTT client is connected", registry=r)
        self.alert_results_dropped = Counter(
            "fe_alert_results_dropped", "Monitor results dropped because the alert queue was full", registry=r
        )
        self.alerts_raised = Counter("fe_alerts_raised", "Alerts raised", ["stream", "monitor"], registry=r)
        self.alerts_suppressed = Counter(
            "fe_alerts_suppressed", "ON transitions that raised no alert", ["reason"], registry=r
        )
        self.mqtt_connect_failures = Counter(
            "fe_mqtt_connect_failures", "Failed MQTT connection attempts", ["reason"], registry=r
        )
        self.clips_bytes = Gauge("fe_clips_bytes", "Bytes used by evidence clips", registry=r)
        # --- the process (edge/allocator.py) ---
        self.malloc_trim = Histogram(
            "fe_malloc_trim_seconds", "Wall time of one glibc malloc_trim(0) (allocator.trim_every)",
            registry=r, buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
        )


METRICS = Metrics()
