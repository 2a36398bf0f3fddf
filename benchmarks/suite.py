"""The benchmark suite behind `lowalt bench`: runs the parts, writes JSON, a markdown table and
PNG plots, and sets each figure beside its target from the issues.

Parts (each also alone: `lowalt bench PART ...`, or `python -m benchmarks.bench_<part>`):
codecs, geofence, conflicts, clearances, traffic, alerts, webhooks, ingest, memory. `--quick`
runs short versions (seconds) of each, for smoke tests; their figures mean little.

    .venv/bin/python -m benchmarks.suite [PART ...] [--quick] [--backend sqlite postgres]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import log, postgres_unavailable
from lowalt.gcpolicy import tune_as_server

PARTS = ("codecs", "geofence", "conflicts", "clearances", "traffic", "alerts", "webhooks",
         "ingest", "memory")
BACKENDS = ("sqlite", "postgres")
DEFAULT_CONNECTIONS = (1, 2, 4, 8)


def machine() -> dict[str, Any]:
    """nproc, CPU model, RAM and the software that matters."""
    cpu = ""
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_kib = 0
    with open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                ram_kib = int(line.split()[1])
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_gib": round(ram_kib / 2**20, 1),
            "python": platform.python_version(), "kernel": platform.release()}


def _part_runner(part: str, quick: bool, backends: Sequence[str], seconds: float,
                 connections: Sequence[int]) -> Callable[[], dict[str, Any]]:
    """The call that runs one part with the suite's settings (full or quick)."""
    if part == "codecs":
        from benchmarks import bench_codecs

        return lambda: bench_codecs.run(2_000 if quick else 20_000, 0.1 if quick else 2.0)
    if part == "geofence":
        from benchmarks import bench_geofence

        ingest_backend = "postgres" if "postgres" in backends else backends[0]
        if quick:
            return lambda: bench_geofence.run(500, 5_000, 10, backends=list(backends))
        return lambda: bench_geofence.run(10_000, 100_000, 200, backends=list(backends),
                                          ingest_backend=ingest_backend,
                                          ingest_seconds=seconds)
    if part == "conflicts":
        from benchmarks import bench_conflicts

        if quick:
            return lambda: bench_conflicts.run([500, 2_000], runs=2, hub=300)
        return lambda: bench_conflicts.run([1_000, 10_000, 100_000], runs=7, hub=2_000)
    if part == "clearances":
        from benchmarks import bench_clearances

        if quick:
            return lambda: bench_clearances.run(300, 300, 30, 5)
        return lambda: bench_clearances.run(10_000, 10_000, 300, 60)
    if part == "traffic":
        from benchmarks import bench_traffic

        if quick:
            return lambda: bench_traffic.run(500, 2, 0.0)
        return lambda: bench_traffic.run(10_000, 10, 20.0)
    if part == "alerts":
        from benchmarks import bench_alerts

        if quick:
            return lambda: bench_alerts.run(list(backends), 2.0, 2_000)
        return lambda: bench_alerts.run(list(backends), 20.0, 20_000)
    if part == "webhooks":
        from benchmarks import bench_webhooks

        if quick:
            return lambda: bench_webhooks.run(list(backends), 200, 5, 2, 1.0, 200)
        return lambda: bench_webhooks.run(list(backends))
    if part == "ingest":
        from benchmarks import bench_ingest

        if quick:
            return lambda: bench_ingest.run(backends, seconds, connections, ws_seconds=1.0,
                                            http_seconds=1.0, naive_seconds=1.0)
        return lambda: bench_ingest.run(backends, seconds, connections)
    if part == "memory":
        from benchmarks import bench_ingest

        if quick:
            return lambda: bench_ingest.memory_run(5_000, rounds=2)
        return bench_ingest.memory_run
    raise ValueError(f"unknown part {part!r}")


def run_suite(parts: Sequence[str], *, quick: bool = False,
              backends: Sequence[str] = BACKENDS, seconds: float | None = None,
              connections: Sequence[int] | None = None, out: str | Path = "bench-output",
              command: str = "lowalt bench") -> dict[str, Any]:
    """Run `parts` (all when empty) and write bench.json, bench.md and the plots into `out`."""
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    chosen = [p for p in PARTS if p in parts] if parts else list(PARTS)
    tune_as_server()  # in-process stages are timed under the server's policies
    seconds = seconds if seconds is not None else (2.0 if quick else 30.0)
    connections = list(connections or ((1, 2) if quick else DEFAULT_CONNECTIONS))
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "command": command,
        "quick": quick, "machine": machine(), "parts": chosen, "skipped": {}, "errors": {},
    }
    usable = list(backends)
    if "postgres" in usable and any(p in chosen for p in ("geofence", "alerts", "webhooks",
                                                          "ingest")):
        reason = postgres_unavailable()
        if reason:
            log(f"bench: postgres skipped: {reason}")
            results["skipped"]["postgres"] = reason
            usable.remove("postgres")
    if not usable:
        usable = ["sqlite"]
    results["backends"] = usable
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for part in chosen:
        log(f"bench: {part}{' (quick)' if quick else ''}")
        started = time.monotonic()
        try:
            results[part] = _part_runner(part, quick, usable, seconds, connections)()
        except Exception as exc:  # one failing part must not lose the others' figures
            traceback.print_exc()
            results["errors"][part] = f"{type(exc).__name__}: {exc}"
        log(f"bench: {part} done in {time.monotonic() - started:.0f} s")
        _write(results, out_dir)  # after every part: a long run keeps what it measured
    results["plots"] = plots(results, out_dir)
    _write(results, out_dir)
    return results


def _write(results: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "bench.json").write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    (out_dir / "bench.md").write_text(markdown(results))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):  # a numpy scalar
        return value.item()
    raise TypeError(f"not JSON: {type(value).__name__}")


# -- figures against targets ---------------------------------------------------------------------

Row = tuple[str, str, str, str, str]  # part, figure, measured, target, verdict


def _fmt(value: float, digits: int = 0) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def _server_cost(bare: dict[str, Any], zoned: dict[str, Any]) -> str:
    """`a -> b (geofence x -> y, other stages ...)` from two gateway runs' CPU figures."""
    if "stage_cpu_us_per_obs" not in bare or "stage_cpu_us_per_obs" not in zoned:
        return ""
    a, b = bare["stage_cpu_us_per_obs"], zoned["stage_cpu_us_per_obs"]
    others = [(name, a.get(name, 0.0), b[name]) for name in sorted(b) if name != "geofence"]
    return (f"{_fmt(bare['server_cpu_us_per_obs'], 2)} -> {_fmt(zoned['server_cpu_us_per_obs'], 2)}"
            f" (geofence {_fmt(a.get('geofence', 0.0), 2)} -> {_fmt(b.get('geofence', 0.0), 2)}; "
            f"other stages {_fmt(sum(x for _, x, _ in others), 2)} -> "
            f"{_fmt(sum(y for _, _, y in others), 2)})")


def _share(impact: dict[str, Any]) -> str:
    """The share of the fleet a zoned ingest run's zones caught, for a row's label."""
    share = impact.get("reports_in_condition")
    return "" if share is None else f"{100 * share:.0f} % of the fleet in a zone condition"


def _rate(impact: dict[str, Any], side: str) -> float:
    """The mean rate of an ingest-cut side over its rounds (older results: its one run)."""
    rate: float = impact.get(f"{side}_obs_per_s", impact[side]["obs_per_s"])
    return rate


def _rounds(impact: dict[str, Any]) -> str:
    """`; rounds a, b %` when the cut was measured in rounds."""
    rounds = impact.get("rounds") or []
    if len(rounds) < 2:
        return ""
    return "; rounds " + ", ".join(_fmt(r["cut_percent"], 1) for r in rounds) + " %"


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("met" if ok else "**not met**")


def summary_rows(r: dict[str, Any]) -> list[Row]:
    """One row per headline figure, with the target the issues set for it (if any); a quick
    run's figures are not judged."""
    rows = _rows(r)
    if r.get("quick"):
        rows = [(p, f, m, t, "(quick run)" if t else "") for p, f, m, t, _ in rows]
    return rows


def impact_rows(zones: int, imp: dict[str, Any]) -> list[Row]:
    """The geofence benchmark's ingest-cut rows (`bench_geofence.ingest_impact`)."""
    rows: list[Row] = []
    rows.append(("geofence", f"{imp['backend']}: ingest cut by {zones:,} zones "
                 f"({_share(imp)}), %",
                 f"{_fmt(imp['cut_percent'], 1)} ({_fmt(_rate(imp, 'without_zones'))}"
                 f" -> {_fmt(_rate(imp, 'with_zones'))} obs/s{_rounds(imp)})",
                 "<= 20 (#4)",
                 _verdict(imp["cut_percent"] <= 20)))
    for name, lay in imp.get("layouts", {}).items():
        rows.append(("geofence", f"the same zones {name} ({_share(lay)}), %",
                     f"{_fmt(lay['cut_percent'], 1)} (-> "
                     f"{_fmt(lay['with_zones']['obs_per_s'])} obs/s)", "", ""))
    cost = _server_cost(imp["without_zones"], imp["with_zones"])
    if cost:
        rows.append(("geofence", "where the cut goes: the server's CPU per observation "
                     "without -> with the zones (in its check stages), µs", cost, "",
                     ""))
    return rows


def _rows(r: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    ingest = r.get("ingest") or {}
    need = {"postgres": 50_000, "sqlite": 30_000}
    for backend in BACKENDS:
        b = ingest.get(backend)
        if not b:
            continue
        gw, naive = b["gateway"], b["naive_one_insert_per_obs"]
        c = gw["connections"]
        rows.append(("ingest", f"{backend}: gateway, {c} connections, obs/s",
                     _fmt(gw["obs_per_s"]), f">= {need[backend]:,} (#3)",
                     _verdict(gw["obs_per_s"] >= need[backend])))
        best = max(b["gateway_by_connections"], key=lambda g: g["obs_per_s"])
        rows.append(("ingest", f"{backend}: gateway, best of {len(b['gateway_by_connections'])}"
                     f" connection counts ({best['connections']}), obs/s",
                     _fmt(best["obs_per_s"]), "", ""))
        rows.append(("ingest", f"{backend}: ack latency p50 / p99, ms",
                     f"{_fmt(gw['ack_p50_ms'], 1)} / {_fmt(gw['ack_p99_ms'], 1)}", "", ""))
        f3411 = b.get("f3411_gateway")
        if f3411:
            rows.append(("ingest", f"{backend}: F3411 gateway (message packs), {c} connections, "
                         f"obs/s (ack p50 / p99 {_fmt(f3411['ack_p50_ms'], 1)} / "
                         f"{_fmt(f3411['ack_p99_ms'], 1)} ms)", _fmt(f3411["obs_per_s"]), "",
                         ""))
            ratio = b["ratio_f3411_vs_native"]
            rows.append(("ingest", f"{backend}: F3411 / native gateway, {c} connections",
                         f"{ratio:.2f}", ">= 0.5 (formats issue)", _verdict(ratio >= 0.5)))
        rows.append(("ingest", f"{backend}: WebSocket, {c} connections, obs/s",
                     _fmt(b["websocket"]["obs_per_s"]), "", ""))
        http = b["http_one_obs_per_request"]["req_per_s"]
        rows.append(("ingest", f"{backend}: HTTP, one observation per request, req/s",
                     _fmt(http), ">= 5,000 (#3)", _verdict(http >= 5_000)))
        rows.append(("ingest", f"{backend}: naive, one INSERT + commit per obs, obs/s",
                     _fmt(naive["obs_per_s"]), "", ""))
        rows.append(("ingest", f"{backend}: gateway / naive",
                     f"{b['ratio_gateway_vs_naive']:,.1f}x", "", ""))
    memory = r.get("memory") or {}
    for kind in ("registered", "unregistered"):
        m = memory.get(kind)
        if m:
            rows.append(("memory", f"server RSS per live UAV ({kind}, {m['uavs']:,}), bytes",
                         _fmt(m["bytes_per_live_uav"]), "<= 2,048 (#3)",
                         _verdict(m["bytes_per_live_uav"] <= 2048)))
    alerts = r.get("alerts") or {}
    for backend in BACKENDS:
        a = alerts.get(backend)
        if a:
            rows.append(("alerts", f"{backend}: alert latency p50 / p99 (send -> SSE event), "
                         f"ms, under {a['background_obs_per_s']:,} obs/s, "
                         f"{a.get('crossing_uavs', 0):,} UAVs crossing the zone "
                         f"({_fmt(a.get('crossing_events_per_s', 0.0))} events/s)",
                         f"{_fmt(a['p50_ms'], 1)} / {_fmt(a['p99_ms'], 1)}",
                         "p99 <= 250 (dispatch)", _verdict(a["p99_ms"] <= 250)))
    webhooks = r.get("webhooks") or {}
    for backend in BACKENDS:
        w = webhooks.get(backend)
        if not w:
            continue
        one, naive = w["one_subscription"], w["naive_one_post_per_event"]
        rows.append(("webhooks", f"{backend}: deliveries, one subscription, events/s "
                     f"({one['events']:,} events, {_fmt(one['events_per_post'])} per POST, "
                     f"{_fmt(one.get('server_cpu_us_per_event', float('nan')), 1)} us server "
                     "CPU per event)",
                     _fmt(one["events_per_s_total"]), ">= 5,000 (dispatch)",
                     _verdict(one["events_per_s_total"] >= 5_000)))
        several = w.get("several_subscriptions")
        if several:
            rows.append(("webhooks", f"{backend}: {several['subscriptions']} subscriptions at "
                         "once, events/s: the slowest subscription (all together)",
                         f"{_fmt(min(several['events_per_s_per_subscription']))} "
                         f"({_fmt(several['events_per_s_total'])})", "", ""))
        rows.append(("webhooks", f"{backend}: naive, one POST per event, events/s",
                     _fmt(naive["events_per_s_total"]), "", ""))
        rows.append(("webhooks", f"{backend}: batched / naive",
                     f"{w['ratio_batched_vs_naive']:,.1f}x", "", ""))
        live = w.get("live")
        if live:
            rows.append(("webhooks", f"{backend}: delivery lag p50 / p99 (raised -> received), "
                         f"ms, {_fmt(live['events_per_s'])} events/s to "
                         f"{live['subscriptions']} subscriptions",
                         f"{_fmt(live['lag_p50_ms'], 1)} / {_fmt(live['lag_p99_ms'], 1)}", "",
                         ""))
    g = r.get("geofence")
    if g:
        rows.append(("geofence", f"index check, {g['zones']:,} zones, uniform points, "
                     "us/observation",
                     _fmt(g["us_per_point"], 2), "<= 5 (#4)", _verdict(g["us_per_point"] <= 5)))
        st = g.get("stage")
        if st:
            rows.append(("geofence", "check stage on the ingest fleet's reports (index check "
                         f"{_fmt(st['index_check_us_per_obs'], 2)}; {st['hits_per_obs']:.2f} "
                         "hits/obs), us/observation", _fmt(st["stage_us_per_obs"], 2),
                         "<= 5 (#4)", _verdict(st["stage_us_per_obs"] <= 5)))
        s1 = g.get("stage_1000")
        if s1:
            rows.append(("geofence", "the same in calls of 1,000 reports (the server's near "
                         "50,000 obs/s), us/observation", _fmt(s1["stage_us_per_obs"], 2),
                         "<= 5 (#4)", _verdict(s1["stage_us_per_obs"] <= 5)))
        su = g.get("stage_unregistered")
        if su:
            rows.append(("geofence", "the same with every UAV's `unregistered_uav` alert open "
                         "(as on the server with the benchmark's fleet), us/observation",
                         _fmt(su["stage_us_per_obs"], 2), "<= 5 (#4)",
                         _verdict(su["stage_us_per_obs"] <= 5)))
        rows.append(("geofence", "check, points/s (naive per-point shapely loop)",
                     f"{_fmt(g['points_per_s'])} ({_fmt(g['naive_points_per_s'], 1)})", "",
                     ""))
        rows.append(("geofence", "indexed / naive", f"{g['ratio']:,}x", "", ""))
        for backend, rl in g.get("reload", {}).items():
            handover = (f" (with the zone worker on, then {_fmt(rl['worker_handover_s'], 2)} "
                        "handing them to it)" if "worker_handover_s" in rl else "")
            rows.append(("geofence", f"reload {g['zones']:,} zones from {backend}, s",
                         _fmt(rl["total_s"], 2) + handover, "<= 1 (#4)",
                         _verdict(rl["total_s"] <= 1.0)))
        imp = g.get("ingest_impact")
        if imp:
            rows += impact_rows(g["zones"], imp)
    conf = r.get("conflicts")
    if conf:
        limits = {10_000: 50.0, 100_000: 1000.0}
        for row in conf["city"]:
            limit = limits.get(row["n"])
            rows.append(("monitor", f"detection, city {row['n']:,} UAVs, ms (naive)",
                         f"{_fmt(row['tick_ms'], 1)} ({_fmt(row['naive_ms'])}"
                         f"{', est.' if row['naive'].startswith('est') else ''})",
                         f"<= {limit:,.0f} (#5)" if limit else "",
                         _verdict(row["tick_ms"] <= limit) if limit else ""))
        hub = conf.get("hub")
        if hub:
            judged = hub["n"] == 2_000
            rows.append(("monitor", f"detection, hub {hub['n']:,} UAVs in 1 km2, ms (naive)",
                         f"{_fmt(hub['tick_ms'], 1)} ({_fmt(hub['naive_ms'])})",
                         "<= 200 (#5)" if judged else "",
                         _verdict(hub["tick_ms"] <= 200) if judged else ""))
        for m in conf.get("monitor", []):
            limit = ((200.0 if m["n"] == 2_000 else None) if m["case"] == "hub"
                     else limits.get(m["n"]))
            rows.append(("monitor", f"whole tick, {m['case']} {m['n']:,} UAVs, ms: median "
                         "(slowest)", f"{_fmt(m['tick_ms'], 1)} ({_fmt(m['tick_ms_max'], 1)})",
                         f"<= {limit:,.0f} (#5)" if limit else "",
                         _verdict(m["tick_ms_max"] <= limit) if limit else ""))
            if "restart_tick_ms" in m:
                rows.append(("monitor", f"first tick after a restart, {m['case']} {m['n']:,} "
                             "UAVs, ms", _fmt(m["restart_tick_ms"], 1),
                             f"<= {limit:,.0f} (#5)" if limit else "",
                             _verdict(m["restart_tick_ms"] <= limit) if limit else ""))
        city = [m for m in conf.get("monitor", []) if m["case"] == "city"]
        if city:
            m = max(city, key=lambda x: x["n"])
            rows.append(("monitor", f"tick memory peak per UAV ({m['n']:,}), bytes",
                         _fmt(m["tick_peak_bytes_per_uav"]), "<= 1,024 (#5)",
                         _verdict(m["tick_peak_bytes_per_uav"] <= 1024)))
    cl = r.get("clearances")
    if cl:
        p99 = cl["indexed"]["p99_ms"]
        rows.append(("clearances", f"decision p99, {cl['clearances']:,} granted + "
                     f"{cl['zones']:,} zones, ms (naive)",
                     f"{_fmt(p99, 2)} ({_fmt(cl['naive']['p99_ms'], 1)})", "<= 50 (#7)",
                     _verdict(p99 <= 50)))
        rows.append(("clearances", "indexed / naive, decisions/s", f"{cl['ratio']:,}x", "", ""))
        for c in cl.get("conformance", []):
            rows.append(("clearances", f"conformance, {c['per_uav']} report(s) per UAV per "
                         f"batch, us/observation", _fmt(c["us_per_obs"], 1), "<= 5 (#7)",
                         _verdict(c["us_per_obs"] <= 5)))
    co = r.get("codecs")
    if co:
        formats = 300_000  # messages or lines/s (formats issue)
        for key, label, target in (
                ("f3411_decode_packs_per_s", "F3411 decode, packs/s", None),
                ("f3411_decode_single_messages_per_s",
                 "F3411 decode, single 25-byte messages, messages/s", formats),
                ("f3411_decode_pack_messages_per_s",
                 "F3411 decode, messages in packs (Basic ID + Location), messages/s", formats),
                ("f3411_encode_packs_per_s", "F3411 encode, packs/s", None),
                ("f3411_assemble_obs_per_s", "F3411 to observations, obs/s", None),
                ("sbs_lines_per_s", "SBS, lines/s", formats),
                ("msgpack_array_obs_per_s", "MessagePack frames (array form), obs/s", None),
                ("msgpack_map_obs_per_s", "MessagePack frames (map form), obs/s", None),
                ("json_map_obs_per_s", "JSON frames (map form), obs/s", None),
                ("validate_obs_per_s", "validation, obs/s", None)):
            if key not in co:
                continue
            rows.append(("codecs", label, _fmt(co[key]),
                         f">= {target:,} (formats issue)" if target else "",
                         _verdict(co[key] >= target) if target else ""))
    tr = r.get("traffic")
    if tr:
        f = tr["fusion"]
        rows.append(("traffic", f"fusion, {f['aircraft']:,} aircraft, us/observation",
                     _fmt(f["fusion_us_per_obs"], 2), "<= 2 (#12)",
                     _verdict(f["fusion_us_per_obs"] <= 2)))
        fs = tr.get("fusion_shared")
        if fs:
            rows.append(("traffic", "fusion as the server runs it (columns that other stages "
                         "also read built once for all), us/observation",
                         _fmt(fs["fusion_us_per_obs"], 2), "", ""))
        mo = tr.get("monitor")
        if mo:
            rows.append(("traffic", f"monitor tick over the fused picture, {mo['aircraft']:,} "
                         "aircraft: median (slowest), ms",
                         f"{_fmt(mo['tick_ms'], 1)} ({_fmt(mo['tick_ms_max'], 1)})",
                         "<= 50 at 10,000 (#5)" if mo["aircraft"] >= 10_000 else "",
                         _verdict(mo["tick_ms"] <= 50) if mo["aircraft"] >= 10_000 else ""))
        fo = tr["fanout"]
        rows.append(("traffic", f"feed flush, {fo['clients']} clients, same / distinct views, "
                     "ms per s", f"{_fmt(fo['same_view']['flush_ms_per_s'], 1)} / "
                     f"{_fmt(fo['distinct_views']['flush_ms_per_s'], 1)}", "", ""))
        e = tr.get("e2e")
        if e:
            rows.append(("traffic", f"feed end to end, {e['clients']} SSE clients x "
                         f"{e['aircraft']:,} aircraft at 1 Hz: age p50 / p99 / max, ms",
                         f"{_fmt(e['age_p50_ms'])} / {_fmt(e['age_p99_ms'])} / "
                         f"{_fmt(e['age_max_ms'])}", "<= 1,000 (#12)",
                         _verdict(e["age_p99_ms"] <= 1000)))
            rows.append(("traffic", "feed end to end: updates per client per s",
                         _fmt(e["updates_per_client_per_s"]), f"{e['aircraft']:,}", _verdict(
                             e["updates_per_client_per_s"] >= 0.95 * e["aircraft"])))
    return rows


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# lowalt benchmark results", "",
        f"- date: {r['date']}", f"- command: `{r['command']}`" + (" (quick)" if r["quick"] else ""),
        f"- machine: {m['nproc']} CPUs ({m['cpu']}), {m['ram_gib']} GiB RAM, Python "
        f"{m['python']}, Linux {m['kernel']}",
        f"- backends: {', '.join(r.get('backends', []))}", "",
        "| part | figure | measured | target | verdict |", "|---|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(row)} |" for row in summary_rows(r)]
    ingest = r.get("ingest") or {}
    sweeps = [(b, ingest[b]) for b in BACKENDS if b in ingest]
    if sweeps:
        lines += ["", "Gateway ingest by connections (obs/s, ack p50 / p99 ms, server CPU %):",
                  "", "| backend | connections | obs/s | ack p50 | ack p99 | server CPU % |",
                  "|---|---|---|---|---|---|"]
        for backend, b in sweeps:
            for g in b["gateway_by_connections"]:
                lines.append(f"| {backend} | {g['connections']} | {g['obs_per_s']:,} | "
                             f"{g['ack_p50_ms']} | {g['ack_p99_ms']} | "
                             f"{g.get('server_cpu_percent', '')} |")
    conf = r.get("conflicts")
    if conf:
        lines += ["", "Traffic monitor by N (ms):", "",
                  "| case | N | detection | whole tick (slowest) | after a restart "
                  "| first, every alert new | candidates | conflicts | naive | ratio |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        ticks = {(m["case"], m["n"]): m for m in conf.get("monitor", [])}
        cases = [("city", c) for c in conf["city"]] + (
            [("hub", conf["hub"])] if conf.get("hub") else [])
        for case, c in cases:
            t = ticks.get((case, c["n"]), {})
            lines.append(
                f"| {case} | {c['n']:,} | {c['tick_ms']} | {t.get('tick_ms', '')} "
                f"({t.get('tick_ms_max', '')}) | {t.get('restart_tick_ms', '')} | "
                f"{t.get('first_tick_ms', '')} | {c['candidate_pairs']:,} | {c['conflicts']:,} "
                f"| {c['naive_ms']:,.0f}{' (est.)' if c['naive'].startswith('est') else ''} | "
                f"{c['ratio']:,.0f}x |")
    if r.get("skipped"):
        lines += ["", "Skipped: " + "; ".join(f"{k}: {v}" for k, v in r["skipped"].items())]
    if r.get("errors"):
        lines += ["", "Failed parts: " + "; ".join(f"{k}: {v}" for k, v in r["errors"].items())]
    if r.get("plots"):
        lines += ["", "Plots: " + ", ".join(r["plots"])]
    return "\n".join(lines) + "\n"


# -- plots ---------------------------------------------------------------------------------------


def plots(r: dict[str, Any], out_dir: Path) -> list[str]:
    """PNG plots of scaling, when matplotlib is installed (`pip install -e '.[bench]'`)."""
    if not (r.get("ingest") or r.get("conflicts")):
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("bench: plots skipped: matplotlib is not installed "
            "(pip install -e '.[bench]' installs it)")
        return []
    written: list[str] = []
    ingest = r.get("ingest") or {}
    sweeps = [(b, ingest[b]) for b in BACKENDS if b in ingest]
    if sweeps:
        fig, ax = plt.subplots(figsize=(6.4, 5.0))
        for (backend, b), colour in zip(sweeps, ("tab:blue", "tab:orange"), strict=False):
            xs = [g["connections"] for g in b["gateway_by_connections"]]
            ys = [g["obs_per_s"] for g in b["gateway_by_connections"]]
            ax.plot(xs, ys, "o-", color=colour, label=f"{backend}: gateway, acks after commit")
            ax.axhline(b["naive_one_insert_per_obs"]["obs_per_s"], color=colour, ls=":",
                       label=f"{backend}: naive, one INSERT per obs")
            f3411 = b.get("f3411_gateway")
            if f3411:
                ax.plot([f3411["connections"]], [f3411["obs_per_s"]], "^", color=colour,
                        label=f"{backend}: F3411 message packs, gateway")
        for (backend, _), colour in zip(sweeps, ("tab:blue", "tab:orange"), strict=False):
            target = {"postgres": 50_000, "sqlite": 30_000}[backend]
            ax.axhline(target, color=colour, ls="--", lw=0.8, label=f"{backend}: target (#3)")
        ax.set_xlabel("gateway connections")
        ax.set_ylabel("observations / s")
        ax.set_xscale("log", base=2)
        ax.set_xticks([g["connections"] for g in sweeps[0][1]["gateway_by_connections"]])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_ylim(bottom=0)
        ax.get_yaxis().set_major_formatter(
            matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_title("Ingest throughput vs connections (frames of 100 obs)")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
        fig.tight_layout()
        fig.savefig(out_dir / "throughput_vs_connections.png", dpi=110)
        plt.close(fig)
        written.append("throughput_vs_connections.png")
    conf = r.get("conflicts")
    if conf and conf.get("city"):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        city = conf["city"]
        ns = [c["n"] for c in city]
        ax.plot(ns, [c["tick_ms"] for c in city], "o-", label="detection (grid + numpy CPA)")
        ticks = [m for m in conf.get("monitor", []) if m["case"] == "city"]
        if ticks:
            ax.plot([m["n"] for m in ticks], [m["tick_ms"] for m in ticks], "s-",
                    label="whole monitor tick")
        measured = [c for c in city if not c["naive"].startswith("est")]
        estimated = [c for c in city if c["naive"].startswith("est")]
        ax.plot([c["n"] for c in city], [c["naive_ms"] for c in city], ":", color="tab:red")
        ax.plot([c["n"] for c in measured], [c["naive_ms"] for c in measured], "x",
                color="tab:red", label="naive all pairs (measured)")
        if estimated:
            ax.plot([c["n"] for c in estimated], [c["naive_ms"] for c in estimated], "+",
                    color="tab:red", ms=10, label="naive all pairs (estimated)")
        hub = conf.get("hub")
        if hub:
            ax.plot([hub["n"]], [hub["tick_ms"]], "D", color="tab:purple",
                    label="dense hub, 1 km2 (detection)")
            hub_tick = [m for m in conf.get("monitor", []) if m["case"] == "hub"]
            if hub_tick:
                ax.plot([hub_tick[0]["n"]], [hub_tick[0]["tick_ms"]], "d", color="tab:pink",
                        label="dense hub (whole tick)")
        ax.plot([2_000, 10_000, 100_000], [200, 50, 1000], "v", color="grey",
                label="targets (#5; 2,000: the hub)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("live UAVs (N)")
        ax.set_ylabel("ms per tick")
        ax.set_title("Traffic-monitor tick vs N (log-log)")
        ax.legend(fontsize=8)
        ax.grid(True, which="major", lw=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "tick_vs_n.png", dpi=110)
        plt.close(fig)
        written.append("tick_vs_n.png")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("parts", nargs="*", metavar="PART")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backend", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--connections", type=int, nargs="+")
    parser.add_argument("--out", default="bench-output")
    args = parser.parse_args(argv)
    results = run_suite(args.parts, quick=args.quick, backends=args.backend,
                        seconds=args.seconds, connections=args.connections, out=args.out,
                        command="python -m benchmarks.suite " + " ".join(sys.argv[1:]))
    print(markdown(results))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
