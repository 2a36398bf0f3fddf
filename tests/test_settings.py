"""Settings are read once, with flags > env > file > defaults, and bad values fail in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lowalt.errors import ConfigError
from lowalt.settings import Settings, load_settings


def test_defaults_match_the_contract() -> None:
    s = load_settings({}, {})
    assert s.database_url == "sqlite:///./lowalt.db"
    assert (s.http_host, s.http_port) == ("127.0.0.1", 8080)
    assert (s.gateway_host, s.gateway_port) == ("127.0.0.1", 7700)
    assert s.max_frame_bytes == 1024 * 1024
    assert s.max_age_s == 86400.0 and s.max_future_s == 5.0


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    config = tmp_path / "lowalt.toml"
    config.write_text('max_age_s = 100.0\nretention_days = 7\nhttp = "0.0.0.0:9000"\n')
    env = {"LOWALT_MAX_AGE_S": "200", "DATABASE_URL": "postgresql://x@h/db"}
    s = load_settings({"max_age_s": 300.0, "config": str(config)}, env)
    assert s.max_age_s == 300.0  # flag beats env and file
    assert s.retention_days == 7.0  # file beats default
    assert s.http_port == 9000
    assert s.backend == "postgres"  # DATABASE_URL is honoured
    s2 = load_settings({"config": str(config)}, env)
    assert s2.max_age_s == 200.0  # env beats file


@pytest.mark.parametrize(
    ("env", "groups"),
    [
        ({}, 1),  # SQLite: one writer, so a second group would only make groups smaller
        ({"DATABASE_URL": "postgresql://x@h/db"}, 2),  # overlaps one group's round trip
        ({"DATABASE_URL": "postgresql://x@h/db", "LOWALT_COMMIT_CONCURRENCY": "1"}, 1),
        ({"LOWALT_COMMIT_CONCURRENCY": "3"}, 3),
    ],
)
def test_groups_committing_at_once_follow_the_backend_unless_set(
    env: dict[str, str], groups: int
) -> None:
    assert load_settings({}, env).commit_groups_at_once == groups


def test_settings_are_frozen() -> None:
    s = load_settings({}, {})
    with pytest.raises(AttributeError):
        s.max_age_s = 1.0  # type: ignore[misc]
    assert isinstance(s, Settings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOWALT_MAX_AGE_S": "abc"}, "max_age_s: expected float"),
        ({"LOWALT_MAX_AGE_S": "-1"}, "max_age_s: must be positive"),
        ({"LOWALT_HTTP": "nohost"}, "http: expected HOST:PORT"),
        ({"LOWALT_GATEWAY": "h:99999"}, "gateway: expected HOST:PORT"),
        ({"DATABASE_URL": "mysql://x"}, "database_url: expected"),
        ({"LOWALT_MAX_FRAME_BYTES": "1.5"}, "max_frame_bytes: expected int"),
        ({"LOWALT_MAX_AGE_S": "nan"}, "max_age_s: expected float"),
        ({"LOWALT_COMMIT_CONCURRENCY": "-1"}, "commit_concurrency: must not be negative"),
        ({"LOWALT_STAGE_INTERVAL_S": "-0.01"}, "stage_interval_s: must not be negative"),
        ({"LOWALT_GEOFENCE_WORKER_MIN_ZONES": "-1"},
         "geofence_worker_min_zones: must not be negative"),
        ({"LOWALT_GEOFENCE_WORKER": "maybe"}, "geofence_worker: expected bool"),
    ],
)
def test_bad_values_are_one_line_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({}, env)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("max_agee_s = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'max_agee_s'"):
        load_settings({"config": str(config)}, {})


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="config: file not found"):
        load_settings({"config": "/nonexistent/lowalt.toml"}, {})


def test_cli_exits_2_with_one_line_on_bad_config(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "lowalt.cli", "migrate", "--database", "oracle://nope"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "database_url" in proc.stderr
