"""Daemon settings: one YAML file plus ``FLAMINGO_EDGE_*`` environment overrides.

Precedence (highest first): explicit overrides passed by the CLI, environment variables
(``FLAMINGO_EDGE_<FIELD>``, nested with ``__``: ``FLAMINGO_EDGE_MODEL__DIR=/models/af2``,
``FLAMINGO_EDGE_ALERTS__MQTT__HOST=broker``), the YAML file, defaults.

`load_settings` turns every problem into `ConfigError` whose lines name the key and the
reason and never the offending value (so secrets do not end up in logs or terminals).
"""

from __future__ import annotations

import contextvars
import os
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from alerts.config import AlertsConfig
from edge.mqtt_client import MqttConfig

from .config_base import StrictModel as _Base
from .files import default_data_dir, engine_cache_dir
from .monitors import TEMPLATE_FIELDS, parse_answer_spec, parse_condition

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(v: Any) -> float:
    """``90``, ``"90s"``, ``"1.5m"``, ``"2h"``, ``"500ms"`` -> seconds (float)."""
    if isinstance(v, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")  # noqa: TRY004 - pydantic reports ValueError only
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|min|m|h|d)?\s*", v)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2) or "s"]
    raise ValueError("expected a duration such as 30s, 5m or 1h")


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _identifier(v: str, what: str) -> str:
    """Stream ids and monitor names end up in MQTT topics, file names and metric labels."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v):
        raise ValueError(f"{what}: 1-64 letters, digits, '_', '.' or '-'")
    return v


class EncoderConfig(_Base):
    """Which backend runs the AF-CLAP encoder (docs/ENGINES.md). `torch` gives tokens that are
    bit-identical to `AF2.encode`; `onnxruntime` and `tensorrt` agree within 1e-4 / fp16
    tolerance and fall back (with a one-line reason in the log) when unavailable."""

    backend: Literal["torch", "onnxruntime", "tensorrt"] = "torch"
    device: str | None = None  # default: the model's device (tensorrt: cuda)
    dtype: Literal["float32", "bfloat16", "float16"] | None = None  # default: the model's
    max_batch: int = Field(8, ge=1, le=64)  # clips per engine call
    # int8: the torch encoder's linear layers in dynamic int8 on CPUs, used only where it
    # measures faster at start (logged); token error ~4e-2 (docs/PERFORMANCE.md "Encoder int8")
    quantize: Literal["none", "int8"] = "none"
    cache_dir: Path | None = None  # exported ONNX / built engines; default <data_dir>/engines


class ModelConfig(_Base):
    dir: Path | None = None  # AF2 checkpoint directory; None = model-free gate only
    # auto: decided per machine from a measurement at load, logged (edge/model/precision.py)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # weight-only quantization of the decoder (edge/model/quant.py; deviation: PERFORMANCE.md)
    quantize: Literal["none", "int8", "int4"] = "none"
    # full: safetensors headers, sizes, NaN/Inf scan, and every file re-hashed against
    # flamingo_edge.sha256.json in a thread beside the load (edge/model/checkpoint.py; cost:
    # docs/PERFORMANCE.md "Loading"); quick: without the hashes (fast: its old name)
    verify: Literal["quick", "full", "fast"] = "full"
    device: str = "cpu"
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)


class LoudnessConfig(_Base):
    """How a streamed clip is scaled before encoding (docs/STREAMING.md)."""

    policy: Literal["peak", "fixed", "none"] = "peak"
    max_gain_db: float = Field(24.0, ge=0, le=96)  # `peak`: never amplify more than this
    gain_db: float = Field(0.0, ge=-60, le=60)  # `fixed`: calibrated gain


class AudioConfig(_Base):
    clip: Duration = 10.0  # AF-CLAP clip; the encoder needs exactly 10 s
    hop: Duration = 10.0  # clip start spacing; < clip means overlapping clips
    memory: Duration = 300.0  # memory span per stream (5 min = 30 clips at 10-s hop)
    window: Duration = 30.0  # default analysis window of a monitor
    ring_margin: Duration = 60.0  # ring = memory + clip + margin
    loudness: LoudnessConfig = Field(default_factory=LoudnessConfig)
    max_pending_clips: int = Field(6, ge=1)  # per stream; beyond it the oldest are dropped
    encode_batch: int = Field(8, ge=1)  # most clips in one encode call
    flush_partial: Duration = 2.0  # at the end of a finite source, pad a tail this long or more
    # a live input away longer than this starts a new timeline piece with a fresh clip grid
    # (no made-up silence); a shorter absence becomes silence on the same clip grid
    max_gap: Duration = 60.0

    @model_validator(mode="after")
    def _check(self) -> AudioConfig:
        if abs(self.clip - 10.0) > 1e-9:
            raise ValueError("clip must be 10s (the AF-CLAP window)")
        if not 0 < self.hop <= self.clip:
            raise ValueError("hop must be > 0 and <= clip")
        if self.memory < self.clip:
            raise ValueError("memory must hold at least one clip")
        if self.window > self.memory:
            raise ValueError("window must not exceed memory")
        from .constants import MAX_CLIPS
        from .windows import clips_for

        n = clips_for(self.memory, self.clip, self.hop)
        if self.max_gap < 0:
            raise ValueError("max_gap must not be negative")
        if n > MAX_CLIPS:
            longest = self.clip + (MAX_CLIPS - 1) * self.hop
            raise ValueError(
                f"memory {self.memory:g}s at hop {self.hop:g}s is {n} clips; AF2 was trained on "
                f"at most {MAX_CLIPS}: use memory <= {longest:g}s or a longer hop")
        return self


class GateConfig(_Base):
    warmup_clips: int = Field(3, ge=1)
    segment: Duration = 0.25
    adapt: float = Field(0.05, ge=0, le=1)
    adapt_below: float = Field(3.0, gt=0)
    min_std_db: float = Field(1.5, gt=0)


class StreamConfig(_Base):
    id: str
    source: Literal["file", "mic", "mqtt", "url"]
    # file
    path: Path | None = None
    speed: float = Field(1.0, ge=0)  # 1 = real time, N = N times, 0 = as fast as possible
    loop: bool = False
    # mic
    device: str | int | None = None
    samplerate: int | None = Field(None, ge=1000, le=384000)  # None: the device default
    channels: int = Field(1, ge=1, le=32)
    # url (docs/SOURCES.md): rtsp://, rtsps://, http(s):// or anything FFmpeg opens
    url: str | None = None
    # "user:password", from the environment variable named here, a file, or inline
    url_credentials_env: str | None = None
    url_credentials_file: Path | None = None
    url_credentials: SecretStr | None = None
    track: int | None = Field(None, ge=0)  # audio track index (default: the first audio track)
    language: str | None = None  # or the first audio track in this language
    transport: Literal["tcp", "udp"] = "tcp"  # RTSP transport
    open_timeout: Duration = Field(10.0, gt=0)
    stall_timeout: Duration = Field(5.0, gt=0)  # no packet this long: reconnect
    backoff_max: Duration = Field(60.0, gt=0)
    fatal_retry: Duration = Field(300.0, gt=0)  # retry period after 401/403/404/no audio
    ffmpeg_options: dict[str, str] = Field(default_factory=dict)
    # free-form labels usable in question templates, e.g. {location}
    labels: dict[str, str] = Field(default_factory=dict)
    # no audio for this long: the stream is silent (default health.silent_after; edge/health.py)
    silent_after: Duration | None = Field(None, gt=0)

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        return _identifier(v, "stream id")

    @model_validator(mode="after")
    def _check(self) -> StreamConfig:
        if self.source == "file" and self.path is None:
            raise ValueError("a file stream needs `path`")
        if self.source == "url":
            if not self.url:
                raise ValueError("a url stream needs `url`")
            if "@" in self.url.split("://", 1)[-1].split("/", 1)[0]:
                raise ValueError("url: put the credentials in url_credentials_env, "
                                 "url_credentials_file or url_credentials, not in the URL")
            if self.url_credentials is None and self.url_credentials_env:
                v = os.environ.get(self.url_credentials_env)
                if not v:
                    raise ValueError(f"url_credentials_env: environment variable "
                                     f"{self.url_credentials_env} is not set")
                self.url_credentials = SecretStr(v.strip())
            if self.url_credentials is None and self.url_credentials_file is not None:
                try:
                    v = Path(self.url_credentials_file).expanduser().read_text(encoding="utf-8")
                except OSError as e:
                    raise ValueError(f"url_credentials_file: cannot read "
                                     f"({e.strerror or type(e).__name__})") from None
                self.url_credentials = SecretStr(v.strip())
            if self.url_credentials is not None and ":" not in self.url_credentials.get_secret_value():
                raise ValueError("url credentials must be `user:password`")
        return self


class DecodingConfig(_Base):
    max_new_tokens: int = Field(64, ge=1, le=1024)
    greedy: bool = True
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    temperature: float = Field(1.0, gt=0)
    seed: int | None = None

    def sampling(self) -> Any:
        """The model's `Sampling` for these settings (hashable: equal settings share a batch)."""
        from edge.model.generate import Sampling

        return Sampling(max_new_tokens=self.max_new_tokens, greedy=self.greedy, top_k=self.top_k,
                        top_p=self.top_p, temperature=self.temperature, seed=self.seed)


class MonitorConfig(_Base):
    """A named question (kind `af2`) or a model-free rule (kind `gate`) bound to streams."""

    name: str
    kind: Literal["af2", "gate"] = "af2"
    streams: list[str] | None = None  # None = every stream
    question: str | None = None  # template: {stream}, {monitor}, {window_s}, {labels...}
    answer: Literal["yes_no", "choice", "text"] = "yes_no"
    positive: Literal["yes", "no"] = "yes"  # yes_no: which answer is positive
    choices: list[str] = Field(default_factory=list)
    alert_on: list[str] = Field(default_factory=list)  # choice: options that are positive
    alert_if: str | None = None  # text: regex that makes the answer positive
    # yes_no / choice: score the options (one forward pass, AF2.score) instead of generating
    # text and parsing it; the score is P(positive / alert_on options) among the options
    scored: bool = True
    threshold: float = Field(0.5, gt=0, lt=1)  # score at or above: positive
    hysteresis: float = Field(0.0, ge=0, lt=1)  # score below threshold - hysteresis: negative
    explain: bool = True  # scored: generate an answer in words when the monitor turns ON
    every: Duration | None = None
    triggers: list[str] = Field(default_factory=list)  # "novelty > 3", "level_dbfs > -30 and ..."
    cooldown: Duration = 60.0
    window: Duration | None = None  # memory span the question sees (default audio.window)
    # skip a scheduled query not started this long after it fell due (default max(30 s, every))
    deadline: Duration | None = None
    # the same for a triggered query (default worker.trigger_deadline): a trigger is about now
    trigger_deadline: Duration | None = None
    decoding: DecodingConfig = Field(default_factory=DecodingConfig)
    severity: Literal["info", "warning", "critical"] = "info"

    @property
    def has_score(self) -> bool:
        """Its results carry a score (an AF2 yes_no/choice monitor, scored): it gets a Home
        Assistant score sensor next to its binary_sensor."""
        return self.kind == "af2" and self.answer in ("yes_no", "choice") and self.scored

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _identifier(v, "monitor name")

    @field_validator("triggers")
    @classmethod
    def _triggers(cls, v: list[str]) -> list[str]:
        for t in v:
            parse_condition(t)  # raises ValueError with the reason
        return v

    @field_validator("alert_if")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"alert_if is not a valid regular expression ({e.msg})") from None
        return v

    @model_validator(mode="after")
    def _check(self) -> MonitorConfig:
        if self.kind == "af2":
            if not self.question:
                raise ValueError("an af2 monitor needs a `question`")
            for _, fname, _, _ in string.Formatter().parse(self.question):
                if fname is not None and fname not in TEMPLATE_FIELDS and not fname.startswith("labels."):
                    raise ValueError(f"question template: unknown field {{{fname}}}")
            parse_answer_spec(self.answer, self.choices, self.alert_on, self.alert_if)
            if self.threshold - self.hysteresis <= 0:
                raise ValueError("threshold - hysteresis must be above 0 (or nothing is ever negative)")
        elif not self.triggers:
            raise ValueError("a gate monitor needs `triggers`")
        if self.every is None and not self.triggers:
            raise ValueError("a monitor needs `every` and/or `triggers`")
        if self.every is not None and self.every <= 0:
            raise ValueError("every must be positive")
        return self


class WorkerConfig(_Base):
    """How the one inference worker shares its time (docs/STREAMING.md, "Scheduling")."""

    # while both clips and queries wait: encode batches in a row, then query groups in a row
    encode_turns: int = Field(1, ge=1)
    query_turns: int = Field(1, ge=1)
    # a query turn answers the groups of up to this many streams due at once as shared
    # batches (1: one stream's group at a time)
    query_streams: int = Field(16, ge=1)
    trigger_deadline: Duration = Field(30.0, gt=0)  # default deadline of a triggered query
    drain_share: float = Field(0.5, ge=0, le=0.9)  # of the stop timeout: finishing queued work


class HealthConfig(_Base):
    # a stream with no audio for this long is reported silent (/healthz, fe_stream_silent);
    # silence is a state, never a reason for the watchdog to restart the daemon
    silent_after: Duration = Field(60.0, gt=0)


class AllocatorConfig(_Base):
    """What the daemon does about memory the C library keeps (edge/allocator.py)."""

    # call glibc's malloc_trim(0) this often, so the memory PyTorch frees goes back to the
    # system instead of staying in malloc's arenas (in the soak: RSS ~45 MB lower, 2.5 ms a
    # call; docs/PERFORMANCE.md). 0: off. Without glibc (musl, macOS) nothing happens.
    trim_every: Duration = Field(10.0, ge=0)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name to bind) reaches this machine only."""
    import ipaddress

    if host.strip().lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HttpConfig(_Base):
    """The web page, its JSON API, /metrics and /healthz (docs/HTTP.md)."""

    enabled: bool = True
    host: str = "127.0.0.1"  # beyond loopback only with a credential (token or user/password)
    port: int = Field(9108, ge=0, le=65535)
    # a credential, when set, is required on every request (loopback clients included):
    # `Authorization: Bearer <token>` or HTTP basic auth (any user name with the token as
    # password, or `username` + `password`)
    token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    max_body: int = Field(16384, ge=1024, le=1 << 20)  # bytes of a request body
    rate: float = Field(20.0, gt=0)  # requests per second per client (token bucket) ...
    burst: int = Field(100, ge=1)  # ... and its burst
    ask_deadline: Duration = Field(30.0, gt=0)  # "ask now": start within this, like a trigger
    max_asks: int = Field(4, ge=1, le=64)  # "ask now" questions waiting at once

    @model_validator(mode="after")
    def _check(self) -> HttpConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("http.username and http.password go together")
        if self.token is not None and len(self.token.get_secret_value()) < 8:
            raise ValueError("http.token must be at least 8 characters")
        if self.enabled and not is_loopback(self.host) and not self.has_credential:
            raise ValueError(f"http.host {self.host} is beyond loopback: set http.token "
                             "(or http.username and http.password), or bind http.host: 127.0.0.1")
        return self

    @property
    def has_credential(self) -> bool:
        return self.token is not None or self.password is not None

    def secrets(self) -> list[str]:
        return [s.get_secret_value() for s in (self.token, self.password) if s is not None]


class LogConfig(_Base):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["console", "json"] = "console"


_YAML_DATA: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "flamingo_edge_yaml", default=None
)


class _YamlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field, field_name):  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_YAML_DATA.get() or {})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLAMINGO_EDGE_", env_nested_delimiter="__", extra="forbid",
        nested_model_default_partial_update=True,
    )

    data_dir: Path | None = None  # default: $XDG_DATA_HOME/flamingo-edge
    model: ModelConfig = Field(default_factory=ModelConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    # broker for `source: mqtt` streams; unset = the alert stage's broker (alerts.mqtt)
    mqtt: MqttConfig | None = None
    streams: list[StreamConfig] = Field(default_factory=list)
    monitors: list[MonitorConfig] = Field(default_factory=list)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    allocator: AllocatorConfig = Field(default_factory=AllocatorConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                   dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, _YamlSource(settings_cls))

    @model_validator(mode="after")
    def _check(self) -> Settings:
        ids = [s.id for s in self.streams]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"duplicate stream id(s): {', '.join(sorted(dup))}")
        names = [m.name for m in self.monitors]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate monitor name(s): {', '.join(sorted(dup))}")
        for m in self.monitors:
            for s in m.streams or []:
                if s not in ids:
                    raise ValueError(f"monitor {m.name!r} names unknown stream {s!r}")
            if m.window is not None and m.window > self.audio.memory:
                raise ValueError(f"monitor {m.name!r}: window exceeds audio.memory")
        return self

    # ---------------------------------------------------------------- helpers
    @property
    def audio_mqtt(self) -> MqttConfig:
        return self.mqtt or self.alerts.mqtt

    def resolved_data_dir(self) -> Path:
        return default_data_dir() if self.data_dir is None else Path(self.data_dir).expanduser()

    def engine_cache_dir(self) -> Path:
        """Where the daemon looks for (and the ``engines`` commands put) ONNX exports and
        engines: ``model.encoder.cache_dir``, else <data_dir>/engines."""
        own = self.model.encoder.cache_dir
        return Path(own).expanduser() if own is not None else engine_cache_dir(self.resolved_data_dir())

    def monitors_for(self, stream: str) -> list[MonitorConfig]:
        return [m for m in self.monitors if m.streams is None or stream in m.streams]

    def secrets(self) -> list[str]:
        out = list(self.alerts.secrets()) + self.http.secrets()
        if self.mqtt is not None and self.mqtt.password is not None:
            out.append(self.mqtt.password.get_secret_value())
        for st in self.streams:
            if st.url_credentials is not None:
                cred = st.url_credentials.get_secret_value()
                out.extend([cred, cred.partition(":")[2]])
        return [s for s in out if s]


class ConfigError(Exception):
    """Invalid configuration: ``problems`` lists ``key: reason`` lines (values never shown)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"invalid configuration ({source}):\n" + "\n".join(f"  {p}" for p in problems))


def _field_model(model: Any, name: str) -> Any:
    """The pydantic model class of field ``name`` of ``model`` (through lists/Optional), or None."""
    import typing

    fields = getattr(model, "model_fields", None)
    if not fields or name not in fields:
        return None
    ann = fields[name].annotation
    todo = [ann]
    while todo:
        t = todo.pop()
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
        todo.extend(typing.get_args(t))
    return None


def _error_location(loc: tuple[Any, ...], data: dict[str, Any] | None) -> tuple[str, Any]:
    """``("monitors", 1, "questoin")`` -> ``("monitors[knocking].questoin", <model of the
    parent>)``: list items are named by their ``id``/``name`` when they have one."""
    out = ""
    model: Any = Settings
    parent: Any = Settings
    node: Any = data
    for part in loc:
        parent = model
        if isinstance(part, int):
            item = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            name = None
            if isinstance(item, dict):
                name = item.get("id", item.get("name"))
            ok = isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name)
            out += f"[{name}]" if ok else f"[{part}]"  # an invalid id is not echoed
            node = item
            continue
        part = str(part)
        out += f".{part}" if out else part
        node = node.get(part) if isinstance(node, dict) else None
        model = _field_model(model, part) if model is not None else None
    return out, parent


def _format_errors(e: ValidationError, data: dict[str, Any] | None = None) -> list[str]:
    import difflib

    out = []
    for err in e.errors(include_url=False, include_input=False, include_context=False):
        loc_t = tuple(err.get("loc", ()))
        loc, parent = _error_location(loc_t, data) if loc_t else ("(top level)", None)
        msg = err.get("msg", "invalid")
        msg = msg.removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden" and loc_t:
            msg = "unknown key"
            known = list(getattr(parent, "model_fields", {}) or {})
            close = difflib.get_close_matches(str(loc_t[-1]), known, n=1, cutoff=0.6)
            if close:
                msg += f"; did you mean `{close[0]}`?"
        out.append(f"{loc}: {msg}")
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(str(p), [f"(file): cannot read ({e.strerror or type(e).__name__})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(p), [f"(file): YAML syntax error{where}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(p), ["(top level): must be a mapping"])
    return data


def load_settings(path: str | Path | None = None, data: dict[str, Any] | None = None,
                  **overrides: Any) -> Settings:
    """Build settings from a YAML file (or an already-parsed mapping), the environment and
    explicit overrides; raise `ConfigError` on any problem."""
    source = str(path) if path is not None else "built-in configuration"
    if path is not None:
        data = read_yaml(path)
        base = Path(path).resolve().parent
        data = _resolve_paths(data, base)
    token = _YAML_DATA.set(data or {})
    try:
        return Settings(**overrides)
    except ValidationError as e:
        raise ConfigError(source, _format_errors(e, data)) from None
    except SettingsError as e:  # an environment value that is not valid JSON
        m = re.search(r'field "([^"]+)"', str(e))
        key = m.group(1) if m else "(environment)"
        var = f"FLAMINGO_EDGE_{key.upper()}" if m else "a FLAMINGO_EDGE_* variable"
        raise ConfigError(source, [(f"{key}: the value from the environment ({var} or one of "
                                    f"its __ sub-keys) is not valid JSON")]) from None
    finally:
        _YAML_DATA.reset(token)


def command_settings(config: str | Path | None, data_dir: str | Path | None = None,
                     data: dict[str, Any] | None = None) -> Settings:
    """The settings a command acts on, by the daemon's rule: the config file given (else the
    built-in defaults, or ``data``), the ``FLAMINGO_EDGE_*`` environment, and ``--data-dir``
    over both. Every command that takes ``--data-dir`` / ``--config`` resolves its data
    directory (`Settings.resolved_data_dir`) and engine cache (`Settings.engine_cache_dir`)
    through this, so each finds what the daemon wrote. Raises `ConfigError`."""
    overrides = {"data_dir": Path(data_dir).expanduser()} if data_dir else {}
    return load_settings(config, data=data, **overrides)


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative stream file paths in a YAML file are relative to that file."""
    streams = data.get("streams")
    if isinstance(streams, list):
        for s in streams:
            if isinstance(s, dict) and isinstance(s.get("path"), str):
                p = Path(s["path"]).expanduser()
                if not p.is_absolute() and not s["path"].startswith("builtin:"):
                    s["path"] = str(base / p)
    return data
