"""End to end over loopback, on both backends: every transport stores, acks, and reads back."""

from __future__ import annotations

import json
import time
from typing import Any

import msgpack
from aiohttp import WSMsgType

from ingest.client import GatewayClient
from lowalt.storage import UavRecord
from tests.conftest import Server


def obs(uav: str, t: float, lat: float = 29.7, lon: float = 106.6, **kw: Any) -> dict[str, Any]:
    return {"uav": uav, "t": t, "lat": lat, "lon": lon, "alt_m": 400.0, **kw}


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_http_json_and_msgpack_then_read_back(server: Server) -> None:
    gw, reg = await server.token("gateway"), await server.token("regulator")
    now = time.time()
    r = await server.client.post("/v1/telemetry", json=[obs("CQ-1", now - 2), obs("CQ-1", now - 2),
                                                        {"uav": "CQ-1"}], headers=auth(gw))
    assert r.status == 200
    assert await r.json() == {"accepted": 1, "duplicates": 1,
                              "rejected": [{"index": 2, "error": "t: missing"}]}
    body = msgpack.packb({"obs": [["CQ-1", now - 1, 29.71, 106.61, 410.0, 5.0, 90.0]]})
    r = await server.client.post("/v1/telemetry", data=body,
                                 headers={**auth(gw), "Content-Type": "application/msgpack"})
    assert (await r.json())["accepted"] == 1
    r = await server.client.get("/v1/uavs/CQ-1/track", headers=auth(reg))
    track = (await r.json())["track"]
    assert [p["t"] for p in track] == [now - 2, now - 1]
    assert track[1]["speed_mps"] == 5.0 and track[1]["source"] == "gateway/http/native"
    r = await server.client.get("/v1/uavs?bbox=106.6,29.7,106.62,29.72", headers=auth(reg))
    assert [u["lat"] for u in (await r.json())["uavs"]] == [29.71]
    r = await server.client.get("/v1/uavs?bbox=100,20,101,21", headers=auth(reg))
    assert (await r.json())["uavs"] == []


async def test_http_errors(server: Server) -> None:
    gw = await server.token("gateway")
    r = await server.client.post("/v1/telemetry", json=[obs("A", time.time())])
    assert r.status == 401
    r = await server.client.post("/v1/telemetry", json=[], headers=auth("lwt_nope"))
    assert r.status == 401
    r = await server.client.post("/v1/telemetry", data=b"{not json",
                                 headers={**auth(gw), "Content-Type": "application/json"})
    assert r.status == 400 and "not valid JSON" in (await r.json())["error"]
    reg = await server.token("regulator")
    r = await server.client.post("/v1/telemetry", json=[obs("A", time.time())], headers=auth(reg))
    assert r.status == 403
    r = await server.client.get("/healthz")
    assert r.status == 200
    r = await server.client.get("/readyz")
    assert r.status == 401
    r = await server.client.get("/readyz", headers=auth(reg))
    assert r.status == 200


async def test_gateway_stream_acks_in_order(server: Server) -> None:
    gw, reg = await server.token("gateway"), await server.token("regulator")
    client = await GatewayClient.connect("127.0.0.1", server.gateway_port, gw, "station-7")
    now = time.time()
    seqs = [client.send_obs([["G1", now - 30 + i, 29.7, 106.6, 100.0], ["G2", now - 30 + i,
                                                                         29.8, 106.7, 90.0]])
            for i in range(20)]
    client.send_raw(b"\xc1garbage")  # not MessagePack: an error frame, the stream goes on
    seqs.append(client.send_obs([["G1", now - 30, 29.7, 106.6, 100.0], {"uav": "bad uav"}]))
    acks = [await client.recv() for _ in range(21)]
    assert [a["ack"] for a in acks[:20]] == seqs[:20]
    assert [(a["accepted"], a["duplicates"]) for a in acks[:20]] == [(2, 0)] * 20
    assert acks[20]["frame"] == 21 and "not valid MessagePack" in acks[20]["error"]
    last = await client.recv()
    assert last == {"ack": seqs[20], "accepted": 0, "duplicates": 1,
                    "rejected": [[1, "uav: must be 1..64 of [A-Za-z0-9._:-]"]]}
    await client.close()
    r = await server.client.get("/v1/uavs/G1/track", headers=auth(reg))
    track = (await r.json())["track"]
    assert len(track) == 20 and track[0]["source"] == "station-7/gateway/native"


async def test_gateway_hello_refused(server: Server) -> None:
    client = await GatewayClient.connect("127.0.0.1", server.gateway_port, "", hello=False)
    client.send({"hello": 1, "token": "lwt_wrong", "name": "x"})
    assert await client.recv() == {"ok": False, "error": "unknown or revoked token"}
    await client.close()
    client = await GatewayClient.connect("127.0.0.1", server.gateway_port, "", hello=False)
    client.send({"seq": 1, "obs": []})
    answer = await client.recv()
    assert answer["ok"] is False and "first frame must be" in answer["error"]
    await client.close()


async def test_satellite_batches_late_out_of_order_and_twice(server: Server) -> None:
    """Live position is the newest by t, never by arrival; duplicates are counted, not stored."""
    gw, reg = await server.token("gateway"), await server.token("regulator")
    client = await GatewayClient.connect("127.0.0.1", server.gateway_port, gw)
    now = time.time()
    newest = ["SAT-1", now - 1, 29.75, 106.65, 120.0]
    client.send_obs([newest, ["SAT-1", now - 30, 29.70, 106.60, 100.0]])
    client.send_obs([["SAT-1", now - 20, 29.71, 106.61, 105.0], newest])  # late burst + repeat
    client.send_obs([["SAT-1", now - 30, 29.70, 106.60, 100.0]])  # the same again
    acks = [await client.recv() for _ in range(3)]
    assert [(a["accepted"], a["duplicates"]) for a in acks] == [(2, 0), (1, 1), (0, 1)]
    await client.close()
    r = await server.client.get("/v1/uavs", headers=auth(reg))
    (live,) = (await r.json())["uavs"]
    assert (live["t"], live["lat"]) == (now - 1, 29.75)
    r = await server.client.get("/v1/uavs/SAT-1/track", params={"from": str(now - 100)},
                                headers=auth(reg))
    assert [p["t"] for p in (await r.json())["track"]] == [now - 30, now - 20, now - 1]


async def test_websocket_binary_and_text(server: Server) -> None:
    gw, reg = await server.token("gateway"), await server.token("regulator")
    now = time.time()
    async with server.client.ws_connect("/v1/telemetry/ws", headers=auth(gw)) as ws:
        await ws.send_bytes(msgpack.packb({"seq": 1, "obs": [["W1", now - 1, 29.7, 106.6, 50]]}))
        msg = await ws.receive()
        assert msg.type == WSMsgType.BINARY
        assert msgpack.unpackb(msg.data) == {"ack": 1, "accepted": 1, "duplicates": 0,
                                             "rejected": []}
        await ws.send_str(json.dumps({"seq": 2, "obs": [obs("W1", now - 0.5)]}))
        msg = await ws.receive()
        assert msg.type == WSMsgType.TEXT and json.loads(msg.data)["accepted"] == 1
        await ws.send_str("{broken")
        msg = await ws.receive()
        assert json.loads(msg.data)["frame"] == 3
    r = await server.client.get("/v1/uavs/W1/track", headers=auth(reg))
    assert len((await r.json())["track"]) == 2


async def test_operator_sends_and_reads_only_its_own(server: Server) -> None:
    await server.runtime.registry.register(UavRecord("MINE", "op1"))
    await server.runtime.registry.register(UavRecord("THEIRS", "op2"))
    op1 = await server.token("operator", operator="op1")
    now = time.time()
    r = await server.client.post("/v1/telemetry", json=[obs("MINE", now), obs("THEIRS", now)],
                                 headers=auth(op1))
    body = await r.json()
    assert body["accepted"] == 1
    assert body["rejected"] == [{"index": 1, "error": "uav: THEIRS is not registered to this "
                                 "operator"}]
    r = await server.client.get("/v1/uavs/MINE/track", headers=auth(op1))
    assert r.status == 200
    r = await server.client.get("/v1/uavs/THEIRS/track", headers=auth(op1))
    assert r.status == 404
    gw = await server.token("gateway")
    await server.client.post("/v1/telemetry", json=[obs("THEIRS", now)], headers=auth(gw))
    r = await server.client.get("/v1/uavs", headers=auth(op1))
    assert [u["uav"] for u in (await r.json())["uavs"]] == ["MINE"]


async def test_metrics_count_what_happened(server: Server) -> None:
    gw, reg = await server.token("gateway"), await server.token("regulator")
    now = time.time()
    await server.client.post("/v1/telemetry", json=[obs("M", now), obs("M", now),
                                                    obs("M", now, lat=99)], headers=auth(gw))
    text = await (await server.client.get("/metrics", headers=auth(reg))).text()
    assert "lowalt_observations_accepted_total 1" in text
    assert "lowalt_observations_duplicate_total 1" in text
    assert 'lowalt_observations_rejected_total{reason="lat"} 1' in text
    assert "lowalt_commit_seconds_count 1" in text


def test_metrics_text_is_exact() -> None:
    from lowalt.metrics import Metrics

    m = Metrics()
    m.counter("c_total", "A counter.")
    m.inc("c_total", 12_345_677)
    m.inc("c_total")
    m.inc("c_total", 0.1, kind="x")
    m.inc("c_total", 0.2, kind="x")
    m.gauge("g_nan", "A gauge.", lambda: float("nan"))
    m.gauge("g_inf", "A gauge.", lambda: float("-inf"))
    text = m.render()
    assert "c_total 12345678\n" in text  # not 1.23457e+07: a rate would move in steps
    assert 'c_total{kind="x"} 0.30000000000000004\n' in text
    assert "g_nan NaN\n" in text and "g_inf -Inf\n" in text


async def test_stream_routes_take_a_query_token_and_others_do_not(server: Server) -> None:
    reg = await server.token("regulator")
    r = await server.client.get("/v1/alerts", params={"access_token": reg})
    assert r.status == 401  # only the stream routes read the query token
    async with server.client.ws_connect(f"/v1/alerts/ws?access_token={reg}") as ws:
        assert not ws.closed
