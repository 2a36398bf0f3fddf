"""The UAV registry, the token endpoints and `unregistered_uav`, over loopback on both backends."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import aiohttp
import pytest

from ingest.client import GatewayClient
from lowalt.storage import UavRecord
from tests.conftest import Server
from tests.test_geofence_e2e import eventually

FULL = {"uav": "CQ-0007", "operator": "op1", "serial": "SN-123", "model": "DJI M300",
        "class": "C2", "max_speed_mps": 23.0, "aliases": ["1581F5FJD228400", "780A27"],
        "priority": True}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post_uav(server: Server, token: str, body: Any) -> tuple[int, Any]:
    r = await server.client.post("/v1/uavs", json=body, headers=auth(token))
    return r.status, await r.json()


async def test_register_read_by_id_and_alias_and_ownership(server: Server) -> None:
    reg = await server.token("regulator")
    op1, op2 = await server.token("operator", "op1"), await server.token("operator", "op2")
    assert await post_uav(server, reg, FULL) == (201, FULL)
    for path in ("CQ-0007", "780A27", "1581F5FJD228400"):
        r = await server.client.get(f"/v1/registry/uavs/{path}", headers=auth(reg))
        assert (r.status, await r.json()) == (200, FULL)
    r = await server.client.get("/v1/registry/uavs/CQ-0007", headers=auth(op1))
    assert r.status == 200
    r = await server.client.get("/v1/registry/uavs/CQ-0007", headers=auth(op2))
    assert (r.status, await r.json()) == (404, {"error": "not found"})  # existence is private
    r = await server.client.get("/v1/registry/uavs/NOPE", headers=auth(reg))
    assert r.status == 404
    r = await server.client.get("/v1/registry/uavs", headers=auth(op2))
    assert (await r.json())["uavs"] == []
    r = await server.client.get("/v1/registry/uavs", headers=auth(op1))
    assert (await r.json())["uavs"] == [FULL]
    stored = await server.runtime.store.uav("CQ-0007")
    assert stored == UavRecord("CQ-0007", "op1", ("1581F5FJD228400", "780A27"), True, "SN-123",
                               "DJI M300", "C2", 23.0)
    # Re-registering replaces the record: fields left out are cleared.
    assert (await post_uav(server, reg, {"uav": "CQ-0007", "operator": "op2"}))[0] == 201
    r = await server.client.get("/v1/registry/uavs/CQ-0007", headers=auth(op2))
    assert await r.json() == {"uav": "CQ-0007", "operator": "op2", "serial": None, "model": None,
                              "class": None, "max_speed_mps": None, "aliases": [],
                              "priority": False}


@pytest.mark.parametrize(("body", "field"), [
    ({**FULL, "colour": "red"}, "colour"),
    ({**FULL, "uav": "bad id"}, "uav"),
    ({**FULL, "uav": "x" * 65}, "uav"),
    ({k: v for k, v in FULL.items() if k != "operator"}, "operator"),
    ({**FULL, "operator": ""}, "operator"),
    ({**FULL, "operator": "a\nb"}, "operator"),
    ({**FULL, "aliases": "780A27"}, "aliases"),
    ({**FULL, "aliases": ["ok", "not ok"]}, "aliases"),
    ({**FULL, "aliases": ["A", "A"]}, "aliases"),
    ({**FULL, "aliases": ["CQ-0007"]}, "aliases"),
    ({**FULL, "aliases": [f"A{i}" for i in range(17)]}, "aliases"),
    ({**FULL, "max_speed_mps": 0}, "max_speed_mps"),
    ({**FULL, "max_speed_mps": 300.5}, "max_speed_mps"),
    ({**FULL, "max_speed_mps": True}, "max_speed_mps"),
    ({**FULL, "max_speed_mps": "12"}, "max_speed_mps"),
    ({**FULL, "priority": "yes"}, "priority"),
    ({**FULL, "class": "C" * 33}, "class"),
    ({**FULL, "serial": 12}, "serial"),
    ([FULL], "body"),
])
async def test_register_validates_every_field(server: Server, body: Any, field: str) -> None:
    reg = await server.token("regulator")
    status, answer = await post_uav(server, reg, body)
    assert status == 400 and answer["error"].startswith(f"{field}:"), answer
    assert server.runtime.registry.by_uav == {}


async def test_limits_of_each_field_are_accepted(server: Server) -> None:
    reg = await server.token("regulator")
    body = {"uav": "U" * 64, "operator": "o" * 64, "serial": "s" * 64, "model": "m" * 128,
            "class": "c" * 32, "max_speed_mps": 300, "aliases": [f"A{i}" for i in range(16)],
            "priority": False}
    status, answer = await post_uav(server, reg, body)
    assert status == 201 and answer == {**body, "max_speed_mps": 300.0}


async def test_identifier_conflicts_are_refused(server: Server) -> None:
    reg = await server.token("regulator")
    assert (await post_uav(server, reg, FULL))[0] == 201
    status, answer = await post_uav(server, reg, {"uav": "OTHER", "operator": "op2",
                                                  "aliases": ["780A27"]})
    assert (status, answer["error"]) == (409, "aliases: 780A27 is already an alias of CQ-0007")
    status, answer = await post_uav(server, reg, {"uav": "OTHER", "operator": "op2",
                                                  "aliases": ["CQ-0007"]})
    assert (status, answer["error"]) == (409, "aliases: CQ-0007 is a registered UAV")
    status, answer = await post_uav(server, reg, {"uav": "780A27", "operator": "op2"})
    assert (status, answer["error"]) == (409, "uav: 780A27 is an alias of CQ-0007")
    assert set(server.runtime.registry.by_uav) == {"CQ-0007"}


async def test_patch_changes_only_what_it_names(server: Server) -> None:
    reg = await server.token("regulator")
    op1, op2 = await server.token("operator", "op1"), await server.token("operator", "op2")
    await post_uav(server, reg, FULL)
    r = await server.client.patch("/v1/uavs/CQ-0007", json={"model": "M350", "serial": None},
                                  headers=auth(reg))
    assert (r.status, await r.json()) == (200, {**FULL, "model": "M350", "serial": None})
    r = await server.client.patch("/v1/uavs/CQ-0007", json={"max_speed_mps": -1},
                                  headers=auth(reg))
    assert r.status == 400
    r = await server.client.patch("/v1/uavs/CQ-0007", json={"uav": "CQ-8"}, headers=auth(reg))
    assert r.status == 400 and (await r.json())["error"].startswith("uav:")
    r = await server.client.patch("/v1/uavs/NOPE", json={"model": "x"}, headers=auth(reg))
    assert r.status == 404
    r = await server.client.patch("/v1/uavs/CQ-0007", json={"operator": "op2"}, headers=auth(reg))
    assert r.status == 200
    assert (await server.client.get("/v1/registry/uavs/CQ-0007", headers=auth(op1))).status == 404
    r = await server.client.get("/v1/registry/uavs/CQ-0007", headers=auth(op2))
    assert await r.json() == {**FULL, "model": "M350", "serial": None, "operator": "op2"}
    assert await server.runtime.store.uav("CQ-0007") == UavRecord(
        "CQ-0007", "op2", ("1581F5FJD228400", "780A27"), True, None, "M350", "C2", 23.0)


async def test_cli_register_still_works_and_is_seen(server: Server, database_url: str) -> None:
    reg = await server.token("regulator")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "lowalt.cli", "uav", "register", "CLI-1", "--operator", "op9",
        "--alias", "CLI-ALIAS", "--priority", "--database", database_url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err
    await server.runtime.registry.refresh()  # the server does this every 5 s
    r = await server.client.get("/v1/registry/uavs/CLI-ALIAS", headers=auth(reg))
    assert (await r.json())["uav"] == "CLI-1" and (await r.json())["priority"] is True


# -- unregistered_uav --------------------------------------------------------------------------

async def unregistered_events(server: Server, reg: str) -> list[dict[str, Any]]:
    r = await server.client.get("/v1/alerts", params={"type": "unregistered_uav"},
                                headers=auth(reg))
    events: list[dict[str, Any]] = (await r.json())["events"]
    return events


async def test_gateway_relaying_unregistered_uav_raises_one_alert(server: Server) -> None:
    reg, gw = await server.token("regulator"), await server.token("gateway")
    await post_uav(server, reg, FULL)
    client = await GatewayClient.connect("127.0.0.1", server.gateway_port, gw, "station")
    now = time.time()
    try:
        for i in range(3):  # three frames, one alert
            client.send_obs([["STRANGER", now - 10 + i, 29.7, 106.6, 120.0],
                             ["CQ-0007", now - 10 + i, 29.7, 106.6, 120.0],
                             ["780A27", now - 10 + i, 29.7, 106.6, 120.0]])  # an alias
            await client.recv_ack()
        stamp = time.strftime("%Y/%m/%d,%H:%M:%S.000", time.gmtime(now - 2))
        sbs = f"MSG,3,1,1,ABCDEF,1,{stamp},{stamp},,3000,,,29.7,106.6,,,0,0,0,0\n"
        client.send({"seq": 99, "sbs": sbs})  # a crewed aircraft (ADS-B) is no UAV
        assert (await client.recv_ack())["accepted"] == 1
        client.send_obs([["LAST", now - 1, 29.7, 106.6, 120.0]])  # checked after the SBS batch
        await client.recv_ack()

        async def both() -> list[dict[str, Any]]:
            events = await unregistered_events(server, reg)
            return events if any(e["uav"] == "LAST" for e in events) else []

        events = await eventually(both)
        assert [(e["uav"], e["state"], e["severity"]) for e in events] == [
            ("STRANGER", "open", "warning"), ("LAST", "open", "warning")]
        assert events[0]["detail"] == {"source": "station/gateway/native"}
    finally:
        await client.close()


async def test_registering_resolves_the_alert_on_the_next_report(server: Server) -> None:
    reg, gw = await server.token("regulator"), await server.token("gateway")
    now = time.time()
    obs = {"uav": "LATE-1", "t": now - 5, "lat": 29.7, "lon": 106.6, "alt_m": 100.0}
    r = await server.client.post("/v1/telemetry", json=obs, headers=auth(gw))
    assert (await r.json())["accepted"] == 1
    await eventually(lambda: unregistered_events(server, reg))
    await post_uav(server, reg, {"uav": "LATE-1", "operator": "op1"})
    r = await server.client.post("/v1/telemetry", json={**obs, "t": now - 4}, headers=auth(gw))
    assert (await r.json())["accepted"] == 1

    async def resolved() -> list[dict[str, Any]]:
        return [e for e in await unregistered_events(server, reg) if e["state"] == "resolved"]

    (event,) = await eventually(resolved)
    assert event["uav"] == "LATE-1" and event["detail"] == {"registered": True}


# -- tokens ------------------------------------------------------------------------------------

async def test_token_lifecycle(server: Server) -> None:
    admin = await server.token("admin")
    r = await server.client.post("/v1/tokens", json={"role": "operator", "operator": "op1",
                                                     "expires_in_s": 3600}, headers=auth(admin))
    assert r.status == 201 and r.headers["Cache-Control"] == "no-store"
    made = await r.json()
    token = made.pop("token")
    assert token.startswith("lwt_")
    assert made["name"] == "op1" and made["role"] == "operator" and made["revoked"] is False
    assert abs(made["expires_at"] - (time.time() + 3600)) < 5
    r = await server.client.get("/v1/uavs", headers=auth(token))
    assert r.status == 200  # the new token works
    r = await server.client.get("/v1/tokens", headers=auth(admin))
    text = await r.text()
    assert token not in text and "hash" not in text  # shown once, hashes never
    listed = {t["id"]: t for t in (await r.json())["tokens"]}
    assert listed[made["id"]] == made
    r = await server.client.delete(f"/v1/tokens/{made['id']}", headers=auth(admin))
    assert r.status == 204
    r = await server.client.get("/v1/uavs", headers=auth(token))
    assert r.status == 401  # at once, despite the cache
    r = await server.client.delete(f"/v1/tokens/{made['id']}", headers=auth(admin))
    assert r.status == 204  # revoking again changes nothing
    for missing in ("999999", "abc"):
        r = await server.client.delete(f"/v1/tokens/{missing}", headers=auth(admin))
        assert r.status == 404
    r = await server.client.get("/v1/tokens", headers=auth(admin))
    assert {t["id"]: t for t in (await r.json())["tokens"]}[made["id"]]["revoked"] is True


async def test_token_expiry(server: Server) -> None:
    admin = await server.token("admin")
    r = await server.client.post("/v1/tokens", json={"role": "gateway", "name": "short",
                                                     "expires_in_s": 0.5}, headers=auth(admin))
    token = (await r.json())["token"]
    assert (await server.client.get("/readyz", headers=auth(token))).status == 200
    await asyncio.sleep(0.6)
    server.runtime.auth.forget((await r.json())["id"])  # past the 5 s cache, as in production
    r = await server.client.get("/readyz", headers=auth(token))
    assert (r.status, (await r.json())["error"]) == (401, "token expired")


@pytest.mark.parametrize(("body", "field"), [
    ({"role": "pilot"}, "role"),
    ({"role": "operator"}, "operator"),
    ({"role": "gateway", "operator": "op1"}, "operator"),
    ({"role": "gateway", "name": "a/b"}, "name"),
    ({"role": "gateway", "name": ""}, "name"),
    ({"role": "gateway", "expires_in_s": 0}, "expires_in_s"),
    ({"role": "gateway", "expires_in_s": "60"}, "expires_in_s"),
    ({"role": "gateway", "scope": "all"}, "scope"),
])
async def test_token_create_validates(server: Server, body: dict[str, Any], field: str) -> None:
    admin = await server.token("admin")
    r = await server.client.post("/v1/tokens", json=body, headers=auth(admin))
    assert r.status == 400 and (await r.json())["error"].startswith(f"{field}:")
    assert len(await server.runtime.store.list_tokens()) == 1



async def test_revoking_a_token_ends_its_open_connections(server: Server) -> None:
    admin = await server.token("admin")
    r = await server.client.post("/v1/tokens", json={"role": "gateway", "name": "doomed"},
                                 headers=auth(admin))
    made = await r.json()
    gateway = await GatewayClient.connect("127.0.0.1", server.gateway_port, made["token"])
    ws = await server.client.ws_connect("/v1/telemetry/ws", headers=auth(made["token"]))
    try:
        seq = gateway.send_obs([["DOOMED", time.time() - 1, 29.7, 106.6, 90.0]])
        assert (await gateway.recv())["ack"] == seq  # working until now
        r = await server.client.delete(f"/v1/tokens/{made['id']}", headers=auth(admin))
        assert r.status == 204
        assert await gateway.recv() == {"error": "token revoked"}
        with pytest.raises(EOFError):
            await gateway.recv()
        msg = await ws.receive()
        assert (msg.type, msg.data, msg.extra) == (aiohttp.WSMsgType.CLOSE, 1008, "token revoked")
    finally:
        await gateway.close()
        await ws.close()

    async def released() -> bool:
        return not server.runtime.ingest.limits.connections.open

    await eventually(released)  # both slots are given back
