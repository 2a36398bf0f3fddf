"""Standard formats over the gateway: F3411 message packs and SBS-1 lines become observations."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime

from ingest.client import GatewayClient
from tests.conftest import GOLDEN, Server

VECTORS = json.loads(
    (GOLDEN / "odid_vectors.json").read_text()
)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_f3411_pack_and_separate_messages_by_src(server: Server) -> None:
    gw, reg = await server.token("gateway"), await server.token("regulator")
    now = time.time()
    hour = math.floor((now - 400) / 3600) * 3600
    receive_t = hour + 361.0  # the golden Location says 360.5 s past the hour
    pack = bytes.fromhex(VECTORS["message_pack"]["hex"])
    basic = bytes.fromhex(VECTORS["basic_id"]["hex"])
    location = bytes.fromhex(VECTORS["location"]["hex"])
    client = await GatewayClient.connect("127.0.0.1", server.gateway_port, gw, "rid-rx-1")
    client.send({"seq": 1, "odid": [{"t": receive_t, "msg": pack}]})
    ack = await client.recv_ack()
    assert (ack["accepted"], ack["rejected"]) == (1, [])
    # A Location alone from an unknown sender is an error; after its Basic ID it joins.
    client.send({"seq": 2, "odid": [{"t": receive_t + 1, "msg": location, "src": "aa:bb"}]})
    ack = await client.recv_ack()
    assert ack["accepted"] == 0 and ack["rejected"][0][1].startswith("odid: ")
    client.send({"seq": 3, "odid": [{"t": receive_t, "msg": basic, "src": "aa:bb"},
                                    {"t": receive_t, "msg": location, "src": "aa:bb"}]})
    ack = await client.recv_ack()
    assert (ack["accepted"], ack["duplicates"]) == (0, 1)  # same uav and t as the pack's
    await client.close()
    r = await server.client.get("/v1/uavs/1596F3B2A0001234/track",
                                params={"from": str(hour), "to": str(now)}, headers=auth(reg))
    (point,) = (await r.json())["track"]
    expect = VECTORS["location"]["expect"]
    assert point["t"] == hour + expect["timestamp_s_past_hour"]
    assert abs(point["lat"] - expect["lat"]) < 1e-6 and abs(point["lon"] - expect["lon"]) < 1e-6
    assert point["alt_m"] == expect["geodetic_alt_m"] and point["agl_m"] == expect["height_m"]
    assert point["speed_mps"] == expect["speed_mps"] and point["track_deg"] == expect["track_deg"]
    assert point["status"] == "airborne"
    assert point["source"] == "rid-rx-1/gateway/f3411"


def sbs_line(msg: int, icao: str, when: datetime, *, alt_ft: str = "", speed_kt: str = "",
             track: str = "", lat: str = "", lon: str = "", vrate: str = "",
             callsign: str = "") -> str:
    d, t = when.strftime("%Y/%m/%d"), when.strftime("%H:%M:%S.%f")[:-3]
    fields = ["MSG", str(msg), "1", "1", icao, "1", d, t, d, t, callsign, alt_ft, speed_kt, track,
              lat, lon, vrate, "", "0", "0", "0", "0"]
    return ",".join(fields)


async def test_sbs_lines_merge_into_crewed_observations(server: Server) -> None:
    gw, reg = await server.token("gateway"), await server.token("regulator")
    when = datetime.fromtimestamp(math.floor(time.time()) - 10, UTC)
    lines = "\r\n".join([
        sbs_line(1, "780A27", when, callsign="CCA4371"),
        sbs_line(4, "780A27", when, speed_kt="182", track="152.3", vrate="-704"),
        sbs_line(3, "780A27", when, alt_ft="3000", lat="29.80020", lon="106.60300"),
        "MSG,3,garbage",
    ]) + "\r\n"
    client = await GatewayClient.connect("127.0.0.1", server.gateway_port, gw, "adsb-rx")
    client.send({"seq": 1, "sbs": lines})
    ack = await client.recv_ack()
    assert ack["accepted"] == 1
    assert [line for line, _ in ack["rejected"]] == [4]
    assert ack["rejected"][0][1].startswith("sbs: ")
    await client.close()
    r = await server.client.get("/v1/uavs/ICAO-780A27/track", headers=auth(reg))
    (point,) = (await r.json())["track"]
    assert point["t"] == when.timestamp()
    assert (point["lat"], point["lon"]) == (29.8002, 106.603)
    assert abs(point["alt_m"] - 914.4) < 1e-9
    assert abs(point["speed_mps"] - 182 * 1852 / 3600) < 1e-9
    assert abs(point["vspeed_mps"] - (-704 * 0.3048 / 60)) < 1e-9
    assert point["source"] == "adsb-rx/gateway/sbs"


async def test_f3411_system_message_gives_the_operator_position(server: Server) -> None:
    """Issue 9: System's operator position is kept on the UAV and shown in /v1/uavs."""
    from ingest.codecs.odid import MessagePack, System, decode, encode

    gw, reg = await server.token("gateway"), await server.token("regulator")
    now = time.time()
    hour = math.floor((now - 400) / 3600) * 3600
    golden = decode(bytes.fromhex(VECTORS["message_pack"]["hex"]))
    assert isinstance(golden, MessagePack)
    system = System(operator_location_type="live_gnss", operator_lat=45.5301,
                    operator_lon=-122.9601)
    pack = encode(MessagePack(messages=(*golden.messages, system)))
    client = await GatewayClient.connect("127.0.0.1", server.gateway_port, gw, "rid-rx-2")
    client.send({"seq": 1, "odid": [{"t": hour + 361.0, "msg": pack}]})
    assert (await client.recv_ack())["accepted"] == 1
    await client.close()
    r = await server.client.get("/v1/uavs", headers=auth(reg))
    (uav,) = (await r.json())["uavs"]
    assert uav["uav"] == "1596F3B2A0001234"
    assert abs(uav["operator_lat"] - 45.5301) < 1e-6
    assert abs(uav["operator_lon"] + 122.9601) < 1e-6
