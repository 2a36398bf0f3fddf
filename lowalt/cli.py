"""The `lowalt` command line (API.md section 10). Exit 0 on success, 2 on usage/config errors."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from lowalt.errors import ConfigError, LowaltError, StorageUnavailable
from lowalt.models import ROLES
from lowalt.settings import Settings, load_settings

T = TypeVar("T")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2
        self.exit(2, f"lowalt: {message}\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database", dest="database_url", metavar="URL",
                   help="sqlite:///PATH or postgresql://... (default: $DATABASE_URL or "
                   "sqlite:///./lowalt.db)")
    p.add_argument("--config", metavar="FILE", help="TOML settings file")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lowalt", description="Low-altitude UAV traffic monitoring server.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = sub.add_parser("serve", help="run the server")
    _common(serve)
    serve.add_argument("--http", metavar="HOST:PORT", help="HTTP listen address (127.0.0.1:8080)")
    serve.add_argument("--gateway", metavar="HOST:PORT",
                       help="gateway stream listen address (127.0.0.1:7700)")
    serve.add_argument("--demo", action="store_true", default=None,
                       help="print ready-made tokens and where to look, and run demo traffic")

    sim = sub.add_parser(
        "simulate", help="generate UAV traffic and send it to a server",
        description="Generate low-altitude traffic over Chongqing (deterministic for a seed) and "
        "send it to a server. With clearances, each logistics flight asks POST /v1/clearances "
        "for its route 90 s before takeoff and flies only when granted; when denied it waits "
        "on its pad and asks again for a departure 60 s later (up to 3 times, while the "
        "flight still fits its 20-minute cycle), else stays on the pad until its next cycle. "
        "Flights due to leave within 30 s of the start stay on their pads for that cycle.")
    sim.add_argument("--token", required=True, help="a gateway (or admin) bearer token")
    where = sim.add_mutually_exclusive_group()
    where.add_argument("--gateway", metavar="HOST:PORT",
                       help="gateway stream (the default, at 127.0.0.1:7700)")
    where.add_argument("--http", metavar="URL", help="POST /v1/telemetry at this base URL")
    where.add_argument("--ws", metavar="URL", help="the telemetry WebSocket at this base URL")
    sim.add_argument("--format", default="native", choices=("native", "f3411", "sbs"))
    sim.add_argument("--array", action="store_true",
                     help="native observations in the compact array form")
    sim.add_argument("--uavs", type=int, default=20, help="random city UAVs (20)")
    sim.add_argument("--rate-hz", type=float, default=1.0, help="reports per aircraft per s (1)")
    sim.add_argument("--duration", type=float, default=60.0, metavar="S",
                     help="seconds to run, 0 until interrupted (60)")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--scenario", default="city,logistics,conflicts,intruder,crewed",
                     help="comma-separated kinds of traffic (all)")
    sim.add_argument("--delay-mean-s", type=float, default=0.0, help="satellite delay, mean")
    sim.add_argument("--delay-jitter-s", type=float, default=0.0,
                     help="satellite delay, standard deviation")
    sim.add_argument("--burst-s", type=float, default=0.0,
                     help="hold observations and release them together every S seconds")
    sim.add_argument("--reorder", type=float, default=0.0, metavar="P",
                     help="fraction delivered after later ones")
    sim.add_argument("--duplicate", type=float, default=0.0, metavar="P",
                     help="fraction delivered twice")
    sim.add_argument("--loss", type=float, default=0.0, metavar="P",
                     help="fraction never delivered")
    sim.add_argument("--clearance-token", metavar="TOKEN",
                     help="a token that may ask the logistics UAVs' clearances (an operator "
                     "token of their operator, cq-logistics, or an admin token)")
    sim.add_argument("--clearances", action=argparse.BooleanOptionalAction, default=None,
                     help="logistics flights ask clearances first and fly only when granted "
                     "(default: on when --clearance-token is given; without it, --token asks)")
    sim.add_argument("--api", metavar="URL",
                     help="the server's HTTP base URL for clearances (default: that of --http "
                     "or --ws, else http://127.0.0.1:8080)")

    sbs = sub.add_parser("sbs-connect",
                         help="forward a live SBS-1 feed (port 30003) to the gateway stream")
    sbs.add_argument("feed", metavar="HOST:PORT", help="the feed (dump1090/readsb port 30003)")
    sbs.add_argument("--token", required=True, help="a gateway (or admin) bearer token")
    sbs.add_argument("--gateway", metavar="HOST:PORT", default="127.0.0.1:7700",
                     help="lowalt's gateway stream (127.0.0.1:7700)")
    sbs.add_argument("--name", default="sbs",
                     help="gateway name: observations come from <name>/gateway/sbs (sbs)")

    bench = sub.add_parser("bench", help="run the benchmark suite, or parts of it")
    bench.add_argument("parts", nargs="*", default=[], metavar="PART",
                       help="codecs, geofence, conflicts, clearances, traffic, alerts, webhooks, "
                       "ingest, "
                       "memory (default: all)")
    bench.add_argument("--quick", action="store_true",
                       help="short versions (seconds), for smoke tests")
    bench.add_argument("--backend", action="append", choices=("sqlite", "postgres"),
                       help="storage for the server parts (default: both)")
    bench.add_argument("--seconds", type=float, metavar="S",
                       help="ingest run length per point (default 30; 2 with --quick)")
    bench.add_argument("--connections", type=int, nargs="+", metavar="N",
                       help="gateway connection counts (default 1 2 4 8)")
    bench.add_argument("--out", default="bench-output",
                       help="directory for bench.json, bench.md and the plots")

    mig = sub.add_parser("migrate", help="create or upgrade the schema")
    _common(mig)

    token = sub.add_parser("token", help="manage bearer tokens")
    tsub = token.add_subparsers(dest="token_command", required=True, parser_class=_Parser)
    create = tsub.add_parser("create", help="create a token and print it (shown once)")
    _common(create)
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--operator", help="the operator an operator token acts for")
    create.add_argument("--name", help="a name for logs and the observation source")
    create.add_argument("--expires-in", type=float, metavar="SECONDS", help="expiry")
    revoke = tsub.add_parser("revoke", help="revoke a token")
    _common(revoke)
    revoke.add_argument("token")

    uav = sub.add_parser("uav", help="manage the UAV registry")
    usub = uav.add_subparsers(dest="uav_command", required=True, parser_class=_Parser)
    reg = usub.add_parser("register", help="register a UAV to an operator")
    _common(reg)
    reg.add_argument("uav")
    reg.add_argument("--operator", required=True)
    reg.add_argument("--alias", action="append", default=[], metavar="ID")
    reg.add_argument("--priority", action="store_true",
                     help="this operator's UAV may ask priority clearances")

    zones = sub.add_parser("zones", help="manage geofence zones")
    zsub = zones.add_subparsers(dest="zones_command", required=True, parser_class=_Parser)
    zimport = zsub.add_parser("import", help="import zones (all or none) from a file")
    _common(zimport)
    zimport.add_argument("file")
    zimport.add_argument("--format", choices=("ed269", "geojson"),
                         help="default: ed269 unless the file is a GeoJSON Feature(Collection)")
    return parser


def _settings(args: argparse.Namespace, **flags: Any) -> Settings:
    return load_settings(
        {"database_url": args.database_url, "config": args.config, **flags}, os.environ
    )


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await coro_fn()

    if sys.platform != "win32":
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


async def _with_store(settings: Settings, job: Callable[[Any], Awaitable[T]]) -> T:
    from lowalt.migrate import migrate
    from lowalt.storage import create_store

    await migrate(settings)
    store = create_store(settings)
    await store.open()
    try:
        return await job(store)
    finally:
        await store.close()


def cmd_token_create(args: argparse.Namespace) -> int:
    from lowalt.auth import hash_token, new_token

    if args.role == "operator" and not args.operator:
        raise ConfigError("--operator is required for an operator token")
    settings = _settings(args)
    token = new_token()
    now = time.time()
    expires = now + args.expires_in if args.expires_in else None
    name = args.name or (args.operator if args.role == "operator" else args.role)

    async def job(store: Any) -> int:
        from lowalt.audit import audit

        result: int = await store.insert_token(
            hash_token(token), name, args.role, args.operator, expires, now
        )
        await audit(store, None, "token.create", str(result),
                    {"name": name, "role": args.role, "operator": args.operator,
                     "expires_at": expires})
        return result

    _run(lambda: _with_store(settings, job))
    print(token)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from lowalt.auth import hash_token

    settings = _settings(args)

    async def job(store: Any) -> bool:
        from lowalt.audit import audit

        record = await store.token_by_hash(hash_token(args.token))
        result: bool = await store.revoke_token(hash_token(args.token))
        if result:
            await audit(store, None, "token.revoke", str(record.token_id),
                        {"name": record.name, "role": record.role, "was_active": True})
        return result

    if not _run(lambda: _with_store(settings, job)):
        print("lowalt: no such active token", file=sys.stderr)
        return 1
    print("revoked", file=sys.stderr)
    return 0


def cmd_uav_register(args: argparse.Namespace) -> int:
    from lowalt.storage import UavRecord

    settings = _settings(args)
    record = UavRecord(args.uav, args.operator, tuple(args.alias), args.priority)

    async def job(store: Any) -> None:
        from lowalt.admin import uav_json
        from lowalt.audit import audit

        await store.upsert_uav(record)
        await audit(store, None, "uav.register", record.uav, uav_json(record))

    _run(lambda: _with_store(settings, job))
    print(f"registered {args.uav} to {args.operator}", file=sys.stderr)
    return 0


def cmd_zones_import(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from geofence.ed269 import zones_from_ed269
    from geofence.service import ZoneExists, zone_store_for, zones_from_request

    settings = _settings(args)
    try:
        doc = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"zones import: cannot read {args.file}: {exc}") from None
    fmt = args.format or (
        "geojson" if isinstance(doc, dict) and doc.get("type") in ("Feature", "FeatureCollection")
        else "ed269"
    )
    zones = zones_from_ed269(doc) if fmt == "ed269" else zones_from_request(doc)

    async def job(store: Any) -> None:
        zone_store = zone_store_for(store)
        await zone_store.setup()
        await zone_store.insert(zones)

    try:
        _run(lambda: _with_store(settings, job))
    except ZoneExists as exc:
        print(f"lowalt: {exc}; nothing imported", file=sys.stderr)
        return 1
    for zone in zones:
        print(zone.id)
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from lowalt.migrate import migrate

    settings = _settings(args)
    _run(lambda: migrate(settings))
    print(f"schema up to date ({settings.backend})", file=sys.stderr)
    return 0


async def add_demo_zones(store: Any) -> None:
    """The demo's zones (lowalt/simulator/demo.py: the intruder flies into the first, the
    logistics hub is in the second), replacing those of an earlier demo run."""
    from geofence.service import new_zone_id, zone_store_for
    from geofence.zones import zone_from_feature
    from lowalt.simulator import demo_zones

    zone_store = zone_store_for(store)
    await zone_store.setup()
    for feature in demo_zones():
        zone = zone_from_feature(feature, new_id=new_zone_id)
        await zone_store.delete(zone.id)
        await zone_store.insert([zone])


async def add_demo_fleet(store: Any) -> None:
    """Register every UAV of the demo traffic to its operator (re-registering is harmless)."""
    from lowalt.simulator import demo_fleet
    from lowalt.storage import UavRecord

    for uav in demo_fleet():
        await store.upsert_uav(UavRecord(uav["uav"], uav["operator"], model=uav["model"],
                                         max_speed_mps=uav["max_speed_mps"]))


def demo_settings(settings: Settings) -> Settings:
    """Under --demo the ground model is the simulated world's (GROUND_AMSL_M,
    GEOID_UNDULATION_M) unless one is configured, so clearances see true heights."""
    from lowalt.settings import replace
    from lowalt.simulator import GEOID_UNDULATION_M, GROUND_AMSL_M

    if not settings.demo or settings.ground_elevation_m or settings.geoid_undulation_m:
        return settings
    return replace(settings, ground_elevation_m=GROUND_AMSL_M,
                   geoid_undulation_m=GEOID_UNDULATION_M)


def cmd_serve(args: argparse.Namespace) -> int:
    from lowalt.app import Runtime, serve
    from lowalt.gcpolicy import tune_malloc

    tune_malloc()  # first: it decides where the big tables made from here on live

    settings = demo_settings(
        _settings(args, http=args.http, gateway=args.gateway, demo=args.demo))
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tokens: dict[str, str] = {}
    if settings.demo:
        from lowalt.auth import hash_token, new_token
        from lowalt.simulator import TRAFFIC_OPERATORS

        async def make_tokens(store: Any) -> None:
            for key, role, operator in (("regulator", "regulator", None),
                                        ("gateway", "gateway", None),
                                        ("logistics", "operator", TRAFFIC_OPERATORS["logistics"])):
                token = new_token()
                await store.insert_token(hash_token(token), f"demo-{key}", role, operator,
                                         time.time() + 7 * 86400, time.time())
                tokens[key] = token
            await add_demo_zones(store)
            await add_demo_fleet(store)

        _run(lambda: _with_store(settings, make_tokens))

    demo_traffic: list[asyncio.Task[Any]] = []  # owned here; it ends when the gateway closes

    def ready(rt: Runtime) -> None:
        if not tokens:
            return
        from lowalt.simulator import DEMO_UAVS, TRAFFIC_OPERATORS, start_demo

        def local(host: str) -> str:
            return host if host not in ("", "0.0.0.0", "::") else "127.0.0.1"

        scheme = "https" if rt.tls is not None else "http"
        base = f"{scheme}://{local(settings.http_host)}:{rt.http_port}"
        demo_traffic.append(start_demo(
            f"{local(settings.gateway_host)}:{rt.gateway_port}", tokens["gateway"],
            api=base, clearance_token=tokens["logistics"]))
        print(
            f"\nlowalt demo is up ({settings.backend}: {settings.database_url})\n"
            f"  regulator token: {tokens['regulator']}\n"
            f"  gateway token:   {tokens['gateway']}  (gateway stream on {settings.gateway})\n"
            f"  logistics token: {tokens['logistics']}  (operator "
            f"{TRAFFIC_OPERATORS['logistics']}: asks its drones' clearances)\n"
            f"  demo traffic:    {DEMO_UAVS} city UAVs, logistics (clearances first), "
            f"conflicts, an airport intruder and crewed arrivals, sent on the gateway; every "
            f"UAV registered\n"
            f"  live map:        {base}/  (log in with the regulator token)\n"
            f"  live traffic:    curl -H 'Authorization: Bearer {tokens['regulator']}' "
            f"{base}/v1/uavs\n"
            f"  metrics:         curl -H 'Authorization: Bearer {tokens['regulator']}' "
            f"{base}/metrics\n",
            flush=True,
        )

    _run(lambda: serve(settings, ready=ready))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    import signal
    from urllib.parse import urlsplit

    from lowalt.simulator import (
        ClearanceAgent,
        SatelliteLink,
        Scenario,
        Summary,
        Target,
        run_simulation,
    )

    target = Target.parse(gateway=args.gateway, http=args.http, ws=args.ws)
    kinds = [k.strip() for k in args.scenario.split(",") if k.strip()]
    asks = args.clearances if args.clearances is not None else bool(args.clearance_token)
    scenario = Scenario(args.seed, args.uavs, kinds, t0=time.time(), clearances=asks)
    agent = None
    if asks:
        api = args.api
        if api is None and target.transport != "gateway":
            parts = urlsplit(target.address)
            scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
            api = f"{scheme}://{parts.netloc}"
        api = api or "http://127.0.0.1:8080"
        if urlsplit(api).scheme not in ("http", "https"):
            raise ConfigError(f"--api {api!r}: expected http://HOST:PORT")
        agent = ClearanceAgent(api, args.clearance_token or args.token, scenario)
    link = SatelliteLink(
        args.seed, delay_mean_s=args.delay_mean_s, delay_jitter_s=args.delay_jitter_s,
        burst_s=args.burst_s, reorder=args.reorder, duplicate=args.duplicate, loss=args.loss,
    )
    if args.duration < 0:
        raise ConfigError("--duration must be 0 or more seconds")

    async def simulate() -> Summary:
        stop = asyncio.Event()
        if sys.platform != "win32":
            for sig in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        return await run_simulation(
            target, args.token, args.format, scenario, link, args.duration or None, args.rate_hz,
            stop, array_form=args.array, progress=lambda s: print(s.line(), flush=True),
            clearances=agent,
        )

    try:
        summary = _run(simulate)
    except OSError as exc:  # refused, unreachable, or the server refused the token
        print(f"lowalt: simulate: {target.address}: {exc}", file=sys.stderr)
        return 1
    print(summary.line(), flush=True)
    return 1 if summary.errors else 0


def cmd_sbs_connect(args: argparse.Namespace) -> int:
    import signal

    from ingest.sbs_connect import SbsConnector
    from lowalt.settings import split_host_port

    feed = split_host_port(args.feed, "sbs-connect: feed address")
    gateway = split_host_port(args.gateway, "sbs-connect: --gateway")
    for what, (_, port) in (("feed address", feed), ("--gateway", gateway)):
        if port == 0:
            raise ConfigError(f"sbs-connect: {what}: port must be 1..65535")
    if not args.name:
        raise ConfigError("sbs-connect: --name must not be empty")
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def connect() -> None:
        stop = asyncio.Event()
        if sys.platform != "win32":
            for sig in (signal.SIGINT, signal.SIGTERM):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await SbsConnector(feed, gateway, args.token, name=args.name).run(stop)

    _run(connect)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from benchmarks.suite import PARTS, markdown, run_suite

    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        raise ConfigError(f"bench: unknown part(s) {', '.join(unknown)}; "
                          f"choose from {', '.join(PARTS)}")
    if args.seconds is not None and args.seconds <= 0:
        raise ConfigError("bench: --seconds must be positive")
    if args.connections and min(args.connections) < 1:
        raise ConfigError("bench: --connections must be 1 or more")
    command = " ".join(
        ["lowalt bench", *args.parts, *(["--quick"] if args.quick else []),
         *(f"--backend {b}" for b in args.backend or []),
         *([f"--seconds {args.seconds:g}"] if args.seconds is not None else []),
         *(["--connections", *map(str, args.connections)] if args.connections else []),
         *([f"--out {args.out}"] if args.out != "bench-output" else [])]
    )
    results = run_suite(args.parts, quick=args.quick,
                        backends=args.backend or ("sqlite", "postgres"), seconds=args.seconds,
                        connections=args.connections, out=args.out, command=command)
    print(markdown(results), end="")
    print(f"results in {args.out}/bench.json and {args.out}/bench.md", file=sys.stderr)
    return 1 if results["errors"] else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "serve": cmd_serve,
        "migrate": cmd_migrate,
        "token.create": cmd_token_create,
        "token.revoke": cmd_token_revoke,
        "uav.register": cmd_uav_register,
        "zones.import": cmd_zones_import,
        "bench": cmd_bench,
        "simulate": cmd_simulate,
        "sbs-connect": cmd_sbs_connect,
    }
    key = args.command
    if key == "token":
        key = f"token.{args.token_command}"
    elif key in ("uav", "zones"):
        key = f"{key}.{getattr(args, key + '_command')}"
    try:
        return commands[key](args)
    except ConfigError as exc:
        print(f"lowalt: {exc}", file=sys.stderr)
        return 2
    except StorageUnavailable as exc:
        print(f"lowalt: storage unavailable: {exc}", file=sys.stderr)
        return 1
    except LowaltError as exc:
        print(f"lowalt: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
