"""Settings: one frozen, typed object read once at start-up from flags, env and a TOML file.

Precedence, highest first: command-line flags, environment (`LOWALT_<NAME>`, plus `DATABASE_URL`),
the TOML file given by `--config` / `LOWALT_CONFIG`, then the defaults below. Every value is
validated here; a bad one raises ConfigError with a one-line message.
"""

from __future__ import annotations

import dataclasses
import math
import ssl
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lowalt.errors import ConfigError

MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///./lowalt.db"
    http: str = "127.0.0.1:8080"
    gateway: str = "127.0.0.1:7700"
    # Observation acceptance window (API.md section 1).
    max_age_s: float = 86400.0
    max_future_s: float = 5.0
    # Limits.
    max_frame_bytes: int = 1 * MIB
    max_body_bytes: int = 8 * MIB
    max_obs_per_batch: int = 10_000
    max_ws_message_bytes: int = 1 * MIB
    # Group commit: one write per batch of at most this many observations; observations waiting
    # beyond max_pending_obs make transports push back (HTTP 503, gateway stops reading).
    commit_max_obs: int = 5_000
    # Groups committing at once; 0 picks by backend (`commit_groups_at_once`): 2 on
    # PostgreSQL, where one group's round trip overlaps the next group's, 1 on SQLite, whose
    # one writer would only get smaller groups.
    commit_concurrency: int = 0
    # The check stages start at most once per this many seconds: groups committed within it go
    # on together (each stage's cost per call paid once; HTTP with one observation per request
    # +16 %); it bounds what it adds to an alert's latency. 0: a stage call per group.
    stage_interval_s: float = 0.02
    max_pending_obs: int = 100_000
    # Per connection: the gateway pauses reading while this many observations await their ack.
    conn_max_inflight_obs: int = 20_000
    retention_days: float = 30.0
    retention_interval_s: float = 3600.0
    retry_after_s: int = 2
    handshake_timeout_s: float = 10.0
    idle_timeout_s: float = 300.0
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"
    demo: bool = False
    # Geofence heights: AGL = agl_m when sent, else alt_m - ground_elevation_m; AMSL = alt_m -
    # geoid_undulation_m (constants by default; defaults for Chongqing's main urban area).
    ground_elevation_m: float = 0.0
    geoid_undulation_m: float = 0.0
    max_agl_m: float = 120.0
    # The geofence stage's zone lookups in a second process (geofence/worker.py), on another
    # core than the event loop's, from this many zones on (for a few zones a second process
    # and a second copy of the index are not worth it). Off by default: on the 2-core benchmark
    # machine it bought no rate and cost CPU in all (docs/BENCHMARKS.md, 2026-11-28 02:51); for
    # machines with cores to spare.
    geofence_worker: bool = False
    geofence_worker_min_zones: int = 1_000
    # Traffic monitor (geofence/monitor.py).
    monitor_tick_s: float = 1.0
    separation_h_m: float = 50.0
    separation_v_m: float = 15.0
    crewed_separation_h_m: float = 500.0
    crewed_separation_v_m: float = 100.0
    lookahead_s: float = 30.0
    lost_after_s: float = 5.0
    max_plausible_speed_mps: float = 100.0
    max_plausible_vspeed_mps: float = 30.0
    # Alerts and their feeds (dispatch/). Hysteresis and update throttling run on observation t.
    alert_clear_s: float = 3.0
    alert_update_min_s: float = 1.0
    alert_refresh_s: float = 10.0
    alert_commit_delay_s: float = 0.002
    alert_max_pending_events: int = 100_000
    feed_max_clients: int = 256
    feed_queue_events: int = 5_000
    feed_heartbeat_s: float = 15.0
    feed_write_timeout_s: float = 10.0
    webhook_max_age_s: float = 3600.0
    webhook_timeout_s: float = 10.0
    webhook_retry_base_s: float = 0.5
    webhook_retry_max_s: float = 60.0
    webhook_batch_events: int = 100
    nats_url: str | None = None
    nats_stream: str = "LOWALT_ALERTS"
    nats_subject_prefix: str = "lowalt.alerts"
    # Identity, access and hardening (docs/API.md section 8). Observations per second per token
    # (token bucket of rate_burst_obs, which must hold one whole batch); long-lived telemetry
    # connections (gateway + WebSocket) per token; HTTP: a complete request header within
    # http_header_timeout_s of connecting or of the previous answer (also the keep-alive idle
    # time), a whole request body within http_body_timeout_s. TLS on both listeners when set.
    rate_obs_per_s: float = 200_000.0
    rate_burst_obs: int = 400_000
    conn_max_per_token: int = 32
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 30.0
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Fusion and the live traffic feed (lowalt/fusion.py, geofence/fusion_stage.py,
    # dispatch/traffic.py; docs/ARCHITECTURE.md "Fusion"). Accuracies are 95 % figures in metres.
    fusion_window_s: float = 10.0
    fusion_reports_per_source: int = 16
    fusion_default_acc_h_m: float = 30.0
    fusion_default_acc_v_m: float = 45.0
    fusion_manoeuvre_mps2: float = 2.0
    mismatch_floor_m: float = 100.0
    mismatch_k: float = 2.0
    traffic_gone_after_s: float = 60.0
    traffic_max_clients: int = 256
    traffic_buffer_bytes: int = 8 * MIB
    # Route clearances (geofence/clearances.py, API.md section 5): time tolerance added to both
    # ends of every piece's window; how far ahead a departure may be; the longest piece of a
    # volume in seconds of flight; how long before its window a report can start a clearance;
    # how often expiries are swept.
    clearance_time_tolerance_s: float = 30.0
    clearance_max_horizon_s: float = 86400.0
    clearance_piece_s: float = 30.0
    clearance_activation_lead_s: float = 600.0
    clearance_expiry_interval_s: float = 1.0
    # The live map page (lowalt/web/): an XYZ raster tile URL template with {z}, {x}, {y} for a
    # base map; unset, the page draws a plain map (graticule and scale bar).
    map_tile_url: str | None = None
    # Fused traffic on NATS JetStream (dispatch/traffic_nats.py): on when nats_url is set and
    # nats_traffic is true; states at most traffic_nats_rate_hz per aircraft, on
    # `<nats_traffic_subject_prefix>.<cell>` in the stream nats_traffic_stream.
    nats_traffic: bool = False
    nats_traffic_stream: str = "LOWALT_TRAFFIC"
    nats_traffic_subject_prefix: str = "lowalt.traffic"
    traffic_nats_rate_hz: float = 1.0
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def http_host(self) -> str:
        return split_host_port(self.http, "http")[0]

    @property
    def http_port(self) -> int:
        return split_host_port(self.http, "http")[1]

    @property
    def gateway_host(self) -> str:
        return split_host_port(self.gateway, "gateway")[0]

    @property
    def gateway_port(self) -> int:
        return split_host_port(self.gateway, "gateway")[1]

    @property
    def backend(self) -> str:
        is_pg = self.database_url.startswith(("postgresql://", "postgres://"))
        return "postgres" if is_pg else "sqlite"

    @property
    def commit_groups_at_once(self) -> int:
        """`commit_concurrency`, or when 0 the backend's: 2 on PostgreSQL, 1 on SQLite."""
        if self.commit_concurrency:
            return self.commit_concurrency
        return 2 if self.backend == "postgres" else 1

    @property
    def sqlite_path(self) -> str:
        return self.database_url.removeprefix("sqlite:///")


def split_host_port(value: str, name: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name}: expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


_POSITIVE = {
    "max_age_s", "max_frame_bytes", "max_body_bytes", "max_obs_per_batch", "max_ws_message_bytes",
    "commit_max_obs", "max_pending_obs", "conn_max_inflight_obs",
    "retention_days", "retention_interval_s", "retry_after_s", "handshake_timeout_s",
    "idle_timeout_s",
    "max_agl_m", "monitor_tick_s", "separation_h_m", "separation_v_m", "crewed_separation_h_m",
    "crewed_separation_v_m", "lookahead_s", "lost_after_s", "max_plausible_speed_mps",
    "max_plausible_vspeed_mps",
}
_NON_NEGATIVE = {"max_future_s", "shutdown_grace_s", "commit_concurrency", "stage_interval_s",
                 "geofence_worker_min_zones"}


def _coerce(name: str, kind: Any, raw: Any) -> Any:
    try:
        if kind in (bool, "bool"):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(text)
        if kind in (int, "int"):
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)
        if kind in (float, "float"):
            if isinstance(raw, bool):
                raise ValueError(raw)
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(raw)
            return value
        if not isinstance(raw, str):
            raise ValueError(raw)
        return raw
    except (TypeError, ValueError):
        type_name = getattr(kind, "__name__", str(kind))
        raise ConfigError(f"{name}: expected {type_name}, got {raw!r}") from None


def load_settings(
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
) -> Settings:
    """Merge flags > env > TOML file > defaults into a validated Settings."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = env or {}
    path = flags.pop("config", None) or env.get("LOWALT_CONFIG") or config_file
    file_values: dict[str, Any] = {}
    if path:
        try:
            file_values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config: file not found: {path}") from None
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config: cannot read {path}: {exc}") from None
    known = {f.name: f for f in fields(Settings) if f.name != "extra"}
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, raw in file_values.items():
        if key in known:
            values[key] = raw
        elif isinstance(raw, dict | list):
            extra[key] = raw  # sections owned by later subsystems (subscriptions, ...)
        else:
            raise ConfigError(f"config: unknown setting {key!r} in {path}")
    for name in known:
        env_key = f"LOWALT_{name.upper()}"
        if env_key in env:
            values[name] = env[env_key]
    if "database_url" not in flags and "LOWALT_DATABASE_URL" not in env and "DATABASE_URL" in env:
        values["database_url"] = env["DATABASE_URL"]
    for key, raw in flags.items():
        if key not in known:
            raise ConfigError(f"unknown setting {key!r}")
        values[key] = raw
    typed = {name: _coerce(name, known[name].type, raw) for name, raw in values.items()}
    settings = Settings(**typed, extra=extra)
    validate(settings)
    return settings


def _require_positive(s: Settings, names: Iterable[str]) -> None:
    for name in names:
        if getattr(s, name) <= 0:
            raise ConfigError(f"{name}: must be positive, got {getattr(s, name)!r}")


def _require_non_negative(s: Settings, names: Iterable[str]) -> None:
    for name in names:
        if getattr(s, name) < 0:
            raise ConfigError(f"{name}: must not be negative, got {getattr(s, name)!r}")


def validate(s: Settings) -> None:
    _require_positive(s, _POSITIVE)
    _require_non_negative(s, _NON_NEGATIVE)
    if not s.database_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigError(
            f"database_url: expected sqlite:///PATH or postgresql://..., got {s.database_url!r}"
        )
    if s.backend == "sqlite" and not s.sqlite_path:
        raise ConfigError("database_url: sqlite:/// needs a file path")
    split_host_port(s.http, "http")
    split_host_port(s.gateway, "gateway")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level: expected DEBUG, INFO, WARNING or ERROR, got {s.log_level!r}")
    if s.commit_max_obs > s.max_pending_obs:
        raise ConfigError("commit_max_obs: must not exceed max_pending_obs")
    _validate_dispatch(s)
    _validate_access(s)
    _validate_traffic(s)
    _validate_clearances(s)


_ACCESS_POSITIVE = ("rate_obs_per_s", "rate_burst_obs", "conn_max_per_token",
                    "http_header_timeout_s", "http_body_timeout_s")


def _validate_access(s: Settings) -> None:
    _require_positive(s, _ACCESS_POSITIVE)
    if s.rate_burst_obs < s.max_obs_per_batch:
        raise ConfigError(f"rate_burst_obs: must hold one whole batch (max_obs_per_batch = "
                          f"{s.max_obs_per_batch}), got {s.rate_burst_obs}")
    if bool(s.tls_cert_file) != bool(s.tls_key_file):
        raise ConfigError("tls_cert_file and tls_key_file: set both or neither")
    server_ssl_context(s)  # a bad certificate or key stops the start here, in one line


def server_ssl_context(s: Settings) -> ssl.SSLContext | None:
    """The TLS context of both listeners (HTTP and gateway); None when TLS is off."""
    if not s.tls_cert_file or not s.tls_key_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(s.tls_cert_file, s.tls_key_file)
    except FileNotFoundError as exc:
        raise ConfigError(f"tls_cert_file/tls_key_file: file not found: {exc.filename}") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls_cert_file/tls_key_file: cannot load: {exc}") from None
    return context


_DISPATCH_POSITIVE = (
    "alert_refresh_s", "alert_max_pending_events", "feed_max_clients", "feed_queue_events",
    "feed_heartbeat_s", "feed_write_timeout_s", "webhook_max_age_s", "webhook_timeout_s",
    "webhook_retry_base_s", "webhook_retry_max_s", "webhook_batch_events",
)
_DISPATCH_NON_NEGATIVE = ("alert_clear_s", "alert_update_min_s", "alert_commit_delay_s")


def _validate_dispatch(s: Settings) -> None:
    _require_positive(s, _DISPATCH_POSITIVE)
    _require_non_negative(s, _DISPATCH_NON_NEGATIVE)
    if s.alert_commit_delay_s > 1.0:
        raise ConfigError(f"alert_commit_delay_s: at most 1.0, got {s.alert_commit_delay_s!r}")
    if s.webhook_batch_events > 1000:
        raise ConfigError(f"webhook_batch_events: at most 1000, got {s.webhook_batch_events!r}")
    if s.nats_url and not s.nats_url.startswith(("nats://", "tls://", "ws://", "wss://")):
        raise ConfigError(f"nats_url: expected nats://HOST:PORT, got {s.nats_url!r}")
    if not s.nats_stream or not all(c.isalnum() or c in "_-" for c in s.nats_stream):
        raise ConfigError(f"nats_stream: expected letters, digits, _ or -, got {s.nats_stream!r}")
    tokens = s.nats_subject_prefix.split(".")
    if not all(t and not any(c in t for c in " *>\t") for t in tokens):
        raise ConfigError(f"nats_subject_prefix: expected dot-separated tokens, got "
                          f"{s.nats_subject_prefix!r}")


_TRAFFIC_POSITIVE = (
    "fusion_window_s", "fusion_reports_per_source", "fusion_default_acc_h_m",
    "fusion_default_acc_v_m", "mismatch_floor_m", "traffic_gone_after_s", "traffic_max_clients",
    "traffic_buffer_bytes",
)


def _validate_traffic(s: Settings) -> None:
    _require_positive(s, _TRAFFIC_POSITIVE)
    for name in ("fusion_manoeuvre_mps2", "mismatch_k"):
        if getattr(s, name) < 0:
            raise ConfigError(f"{name}: must not be negative, got {getattr(s, name)!r}")
    if not 0.1 <= s.traffic_nats_rate_hz <= 10.0:
        raise ConfigError(f"traffic_nats_rate_hz: must be 0.1..10, got {s.traffic_nats_rate_hz!r}")
    stream = s.nats_traffic_stream
    if not stream or not all(c.isalnum() or c in "_-" for c in stream):
        raise ConfigError(f"nats_traffic_stream: expected letters, digits, _ or -, got {stream!r}")
    if not all(t and not any(c in t for c in " *>\t")
               for t in s.nats_traffic_subject_prefix.split(".")):
        raise ConfigError(f"nats_traffic_subject_prefix: expected dot-separated tokens, got "
                          f"{s.nats_traffic_subject_prefix!r}")


def _validate_clearances(s: Settings) -> None:
    for name in ("clearance_max_horizon_s", "clearance_piece_s", "clearance_expiry_interval_s"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{name}: must be positive, got {getattr(s, name)!r}")
    for name in ("clearance_time_tolerance_s", "clearance_activation_lead_s"):
        if getattr(s, name) < 0:
            raise ConfigError(f"{name}: must not be negative, got {getattr(s, name)!r}")
    if s.clearance_time_tolerance_s > 3600:
        raise ConfigError(f"clearance_time_tolerance_s: at most 3600, got "
                          f"{s.clearance_time_tolerance_s!r}")


def replace(s: Settings, **changes: Any) -> Settings:
    """A copy with changes, validated like the original (tests and the CLI use it)."""
    new = dataclasses.replace(s, **changes)
    validate(new)
    return new
