"""`lowalt bench` runs end to end: the cheap in-process parts, and the webhook part against a
server, in their quick form write a JSON with the expected figures (positive numbers; no timing
is asserted) and a markdown table."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def _quick(out: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`lowalt bench ARGS --quick --out OUT`: the finished process and its bench.json."""
    done = subprocess.run(
        [sys.executable, "-m", "lowalt.cli", "bench", *args, "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done, json.loads((out / "bench.json").read_text())


@pytest.mark.timeout(300)
def test_bench_quick_codecs_and_conflicts(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    done, results = _quick(out, "codecs", "conflicts")

    assert results["parts"] == ["codecs", "conflicts"]
    assert results["quick"] is True and results["errors"] == {}
    assert results["command"].startswith("lowalt bench codecs conflicts --quick")
    assert _positive(results["machine"]["nproc"])

    codecs = results["codecs"]
    for key in ("f3411_decode_packs_per_s", "f3411_encode_packs_per_s",
                "f3411_assemble_obs_per_s", "sbs_lines_per_s", "msgpack_array_obs_per_s",
                "msgpack_map_obs_per_s", "json_map_obs_per_s", "validate_obs_per_s",
                "f3411_decode_single_messages_per_s", "f3411_decode_pack_messages_per_s"):
        assert _positive(codecs[key]), key

    conflicts = results["conflicts"]
    assert [row["n"] for row in conflicts["city"]] == [500, 2000]
    for row in [*conflicts["city"], conflicts["hub"]]:
        for key in ("tick_ms", "naive_ms", "ratio"):
            assert _positive(row[key]), (row["n"], key)
        assert row["naive_equal"] is True  # the same pairs as the all-pairs reference
    assert {(m["case"], m["n"]) for m in conflicts["monitor"]} == {
        ("city", 500), ("city", 2000), ("hub", 300)}
    for m in conflicts["monitor"]:
        assert _positive(m["tick_ms"]) and _positive(m["tick_peak_bytes_per_uav"])

    table = (out / "bench.md").read_text()
    assert "| part | figure | measured | target | verdict |" in table
    assert "F3411 decode" in table and "detection, city 2,000 UAVs" in table
    assert "F3411 decode, single 25-byte messages, messages/s" in table
    assert ">= 300,000 (formats issue)" in table
    assert table in done.stdout
    if importlib.util.find_spec("matplotlib") is not None:
        assert results["plots"] == ["tick_vs_n.png"]
        assert (out / "tick_vs_n.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert results["plots"] == []
        assert "matplotlib is not installed" in done.stderr


@pytest.mark.timeout(300)
def test_bench_quick_geofence(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    _, results = _quick(out, "geofence", "--backend", "sqlite")
    assert results["errors"] == {}
    g = results["geofence"]
    assert g["zones"] == 500 and g["naive_equal"] is True  # the naive loop's hits, the same
    for part, batch in (("stage", 5_000), ("stage_1000", 1_000), ("stage_unregistered", 5_000)):
        assert g[part]["batch"] == batch and g[part]["observations"] == 4 * 5_000, part
        assert _positive(g[part]["stage_us_per_obs"]), part
        # Measured once the whole fleet has been seen (its first sightings open alerts).
        assert g[part]["warm_up_observations"] >= g[part]["fleet_uavs"] == 10_000, part
    assert _positive(g["reload"]["sqlite"]["total_s"])
    table = (out / "bench.md").read_text()
    assert "the same in calls of 1,000 reports" in table
    assert "reload 500 zones from sqlite, s" in table


@pytest.mark.timeout(300)
def test_bench_quick_webhooks_against_a_server(tmp_path: Path) -> None:
    """The webhook part end to end on SQLite: every burst event reaches each subscription once,
    signed; the naive one-POST-per-event baseline runs beside it and the ratio is given."""
    out = tmp_path / "bench"
    _, results = _quick(out, "webhooks", "--backend", "sqlite")
    assert results["errors"] == {} and results["backends"] == ["sqlite"]

    w = results["webhooks"]["sqlite"]
    assert w["burst_events"] >= 200 * 5  # 200 UAVs inside 5 stacked zones: one open each
    one, several = w["one_subscription"], w["several_subscriptions"]
    naive = w["naive_one_post_per_event"]
    assert one["events"] == several["events"] == w["burst_events"]
    assert one["events_per_post"] > 1 and naive["events_per_post"] == 1
    assert naive["posts"] == naive["events"]
    for part in (one, several, naive):
        assert _positive(part["events_per_s_total"])
        assert all(_positive(v) for v in part["events_per_s_per_subscription"])
    assert len(several["events_per_s_per_subscription"]) == 2
    assert _positive(w["ratio_batched_vs_naive"])
    assert _positive(w["live"]["events"]) and _positive(w["live"]["lag_p99_ms"])
    assert w["duplicates"] == naive["duplicates"] == 0
    assert w["bad_signatures"] == naive["bad_signatures"] == 0
    table = (out / "bench.md").read_text()
    assert "sqlite: deliveries, one subscription, events/s" in table
    assert "sqlite: batched / naive" in table


@pytest.mark.timeout(300)
def test_bench_quick_ingest_native_and_f3411_gateway(tmp_path: Path) -> None:
    """The ingest part on SQLite: the F3411 gateway load (message packs) runs on the headline
    server beside the native one, every pack acked is stored once, and the ratio is given."""
    out = tmp_path / "bench"
    _, results = _quick(out, "ingest", "--backend", "sqlite", "--connections", "1")
    assert results["errors"] == {} and results["backends"] == ["sqlite"]

    b = results["ingest"]["sqlite"]
    native, f3411 = b["gateway"], b["f3411_gateway"]
    assert native["connections"] == f3411["connections"] == 1
    for run in (native, f3411):
        assert _positive(run["obs_per_s"]) and _positive(run["observations"])
        assert run["duplicates"] == 0 and run["rejected"] == 0
    assert f3411["stored"] == f3411["observations"]
    assert _positive(b["ratio_f3411_vs_native"])
    table = (out / "bench.md").read_text()
    assert "sqlite: F3411 gateway (message packs), 1 connections, obs/s" in table
    assert "sqlite: F3411 / native gateway, 1 connections" in table
    assert ">= 0.5 (formats issue)" in table


def test_bench_unknown_part_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lowalt.cli", "bench", "warp-drive", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "unknown part(s) warp-drive" in done.stderr
    assert not (tmp_path / "bench.json").exists()


def test_sqlite_layout_and_alert_memory_scripts_run(tmp_path: Path) -> None:
    from benchmarks.alert_memory import per_alert
    from benchmarks.bench_sqlite_layout import LAYOUTS, run

    for layout in LAYOUTS:
        path = tmp_path / f"{layout}.db"
        run(layout, path, seconds=0.5, uavs=100)
        conn = sqlite3.connect(path)
        (rows,) = conn.execute("SELECT count(*) FROM observations").fetchone()
        conn.close()
        assert rows >= 1_000 and rows % 1_000 == 0
    total, top = asyncio.run(per_alert(2_000))
    assert total > 0 and top and all(isinstance(where, str) for _, where in top)


@pytest.mark.timeout(300)
def test_pair_runs_two_trees_at_once_and_swaps(tmp_path: Path) -> None:
    """`python -m benchmarks.pair`: both sides run (this tree twice, on SQLite), each round
    prints both sides' figures and the ratio of their rates, every second round with the sides
    swapped back into place; a side that cannot run fails the whole run, naming its tree."""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.pair", str(repo), str(repo), "--backend", "sqlite",
         "--zones", "50", "--seconds", "1", "--rounds", "2"],
        capture_output=True, text=True, timeout=280, cwd=repo,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rounds = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rounds) == 2 and [r.get("swapped", False) for r in rounds] == [False, True]
    for r in rounds:
        assert r["mode"] == "zones"
        a, b = r["a"], r["b"]
        assert a["tree"] == b["tree"] == str(repo)
        assert _positive(a["obs_per_s"]) and _positive(b["obs_per_s"])
        assert a["rejected"] == b["rejected"] == 0
        assert r["b_over_a"] == round(b["obs_per_s"] / a["obs_per_s"], 3)
        # What each check stage cost the server in the run, from its own counters.
        for side in (a, b):
            stages = side["stage_cpu_us_per_obs"]
            assert set(stages) == {"emergency", "geofence", "motion", "clearances",
                                   "unregistered", "fusion"}
            assert _positive(stages["geofence"]) and _positive(side["server_cpu_us_per_obs"])
            assert sum(stages.values()) < side["server_cpu_us_per_obs"]

    broken = subprocess.run(
        [sys.executable, "-m", "benchmarks.pair", str(repo), str(tmp_path), "--backend",
         "sqlite", "--seconds", "1", "--rounds", "1"],
        capture_output=True, text=True, timeout=280, cwd=repo,
    )
    assert broken.returncode != 0
    assert f"{tmp_path}: the run failed" in broken.stderr


@pytest.mark.timeout(300)
def test_ingest_cut_alternates_rounds_and_sums_them() -> None:
    """The geofence benchmark's ingest cut: without and with zones in two rounds, the second
    round's runs in the other order; the cut is of the summed rates, each round's listed; a
    layout is measured against the mean rate without zones; the table row says all of it."""
    import numpy as np

    from benchmarks import bench_geofence, suite

    zones = bench_geofence.random_zones(50, np.random.default_rng(1))
    spread = bench_geofence.random_zones(50, np.random.default_rng(1), spread=3.0)
    imp = bench_geofence.ingest_impact(
        zones, "sqlite", 1.0, rounds=2,
        also={"spread x3": (spread, {}),
              "worker": (zones, {"LOWALT_GEOFENCE_WORKER": "true"})})
    rounds = imp["rounds"]
    assert len(rounds) == 2
    bare = [r["without_zones_obs_per_s"] for r in rounds]
    zoned = [r["with_zones_obs_per_s"] for r in rounds]
    assert all(map(_positive, [*bare, *zoned]))
    assert imp["cut_percent"] == round(100.0 * (1.0 - sum(zoned) / sum(bare)), 1)
    assert imp["without_zones"]["obs_per_s"] == bare[0]
    assert imp["with_zones_obs_per_s"] == round(sum(zoned) / 2)
    layout = imp["layouts"]["spread x3"]
    assert layout["cut_percent"] == round(
        100.0 * (1.0 - layout["with_zones"]["obs_per_s"] / (sum(bare) / 2)), 1)
    # The servers' environment is the layout's: a zone worker (not used below 1,000 zones) is
    # on /metrics only when turned on.
    assert "zone_worker" not in imp["with_zones"]
    assert "zone_worker" in imp["layouts"]["worker"]["with_zones"]
    row = next(r for r in suite.impact_rows(50, imp) if "ingest cut" in r[1])
    assert f"rounds {rounds[0]['cut_percent']:,.1f}, {rounds[1]['cut_percent']:,.1f} %" in row[2]
