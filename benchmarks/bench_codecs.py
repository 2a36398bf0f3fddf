"""Codec rates: F3411 decode/encode, SBS lines, MessagePack frames, validation.

In one process, no I/O, on traffic made like the simulator's (lowalt/simulator/senders.py):
- F3411: Message Packs (0xF) of Basic ID + Location, 53 bytes each: `odid.decode` and
  `odid.encode` per pack, also given per message (a pack carries 2); single 25-byte messages
  (Basic ID and Location in turn) through `odid.decode`, per message; and `OdidAssembler.feed`
  (decode, join, observation maps) per item;
- SBS: MSG,4 (velocity) + MSG,3 (position) line pairs through `SbsTracker.feed`, per line;
- MessagePack: gateway data frames of 100 observations, array form and map form, through
  `decode_payload` (the gateway's decode), per observation; JSON map form beside them for
  comparison (the HTTP and WebSocket text path);
- validation: `Validator.observation` on decoded array-form items, per observation.
There is no naive design to compare with here: these are the per-item ceilings of each path.

    .venv/bin/python -m benchmarks.bench_codecs [--n 20000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgpack

from ingest.codecs import odid
from ingest.codecs.sbs import FPM_MPS, FT_M, KT_MPS, SbsTracker
from ingest.gateway import decode_payload
from ingest.validate import Validator

T0 = time.time()


def _rate(fn: Callable[[], int], min_s: float) -> float:
    """Items per second of `fn` (which returns how many items it did), repeated >= min_s."""
    fn()  # warm-up
    done, started = 0, time.perf_counter()
    while True:
        done += fn()
        elapsed = time.perf_counter() - started
        if elapsed >= min_s:
            return done / elapsed


def _states(n: int) -> list[dict[str, Any]]:
    return [{"uav": f"CQ-{k:05d}", "t": T0 - 1.0 + k * 1e-4, "lat": 29.5 + (k % 400) * 1e-3,
             "lon": 106.4 + (k // 400) * 1e-3, "alt_m": 320.0 + k % 50, "agl_m": 60.0 + k % 50,
             "speed_mps": 12.0, "track_deg": float(k % 360), "vspeed_mps": 0.5}
            for k in range(n)]


def _pack(s: dict[str, Any]) -> odid.MessagePack:
    basic = odid.BasicId(id_type="caa_registration", ua_type="helicopter_or_multirotor",
                         uas_id=s["uav"])
    location = odid.Location(
        status="airborne", height_type="agl", track_deg=s["track_deg"],
        speed_mps=s["speed_mps"], vspeed_mps=s["vspeed_mps"], lat=s["lat"], lon=s["lon"],
        geodetic_alt_m=s["alt_m"], height_m=s["agl_m"], horiz_accuracy=10, vert_accuracy=4,
        speed_accuracy=3, timestamp_s_past_hour=round(s["t"] % 3600.0, 1),
        timestamp_accuracy_s=0.1,
    )
    return odid.MessagePack(messages=(basic, location))


def _sbs(s: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(s["t"], UTC)
    day, clock = when.strftime("%Y/%m/%d"), when.strftime("%H:%M:%S.%f")[:-3]
    icao = hashlib.blake2b(s["uav"].encode(), digest_size=3).hexdigest().upper()
    head = f"MSG,{{}},1,1,{icao},1,{day},{clock},{day},{clock},,"
    return (head.format(4) + f",{s['speed_mps'] / KT_MPS:.1f},{s['track_deg']:.1f},,,"
            f"{s['vspeed_mps'] / FPM_MPS:.0f},,,,,\r\n"
            + head.format(3) + f"{s['alt_m'] / FT_M:.0f},,,{s['lat']:.5f},{s['lon']:.5f},"
            ",,0,0,0,0\r\n")


def run(n: int = 20_000, min_s: float = 1.0) -> dict[str, Any]:
    """Items per second of each codec path; see the module docstring."""
    states = _states(n)
    packs = [_pack(s) for s in states]
    wire = [odid.encode(p) for p in packs]
    singles = [odid.encode(m) for p in packs for m in p.messages]  # 25 bytes each
    per_pack = len(packs[0].messages)
    items = [{"t": T0, "msg": w, "src": f"02:00:00:{k >> 16 & 255:02x}:{k >> 8 & 255:02x}:"
                                        f"{k & 255:02x}"} for k, w in enumerate(wire)]
    sbs_text = "".join(_sbs(s) for s in states)
    sbs_lines = sbs_text.count("\n")
    array_rows = [[s["uav"], s["t"], s["lat"], s["lon"], s["alt_m"], s["speed_mps"],
                   s["track_deg"], s["vspeed_mps"], s["agl_m"]] for s in states]
    map_rows = [dict(s) for s in states]
    frames_array = [msgpack.packb({"seq": k, "obs": array_rows[i:i + 100]}, use_bin_type=True)
                    for k, i in enumerate(range(0, n, 100))]
    frames_map = [msgpack.packb({"seq": k, "obs": map_rows[i:i + 100]}, use_bin_type=True)
                  for k, i in enumerate(range(0, n, 100))]
    frames_json = [json.dumps({"seq": k, "obs": map_rows[i:i + 100]}).encode()
                   for k, i in enumerate(range(0, n, 100))]
    validator = Validator(86_400.0, 5.0)

    def decode_all() -> int:
        for w in wire:
            odid.decode(w)
        return len(wire)

    def decode_singles() -> int:
        for w in singles:
            odid.decode(w)
        return len(singles)

    def encode_all() -> int:
        for p in packs:
            odid.encode(p)
        return len(packs)

    def assemble() -> int:
        obs, errors = odid.OdidAssembler().feed(list(items))
        assert not errors, errors[:3]
        return len(obs)

    def sbs() -> int:
        obs, errors = SbsTracker().feed(sbs_text, T0)
        assert not errors and len(obs) == n, errors[:3]
        return sbs_lines

    def frames(bodies: list[bytes], decode: Callable[[bytes], Any]) -> Callable[[], int]:
        def go() -> int:
            for body in bodies:
                decode(body)
            return n
        return go

    def validate() -> int:
        now = time.time()
        for row in array_rows:
            validator.observation(row, now, "bench/gateway/native")
        return n

    rates = {
        "f3411_decode_packs_per_s": _rate(decode_all, min_s),
        "f3411_encode_packs_per_s": _rate(encode_all, min_s),
        "f3411_assemble_obs_per_s": _rate(assemble, min_s),
        "sbs_lines_per_s": _rate(sbs, min_s),
        "msgpack_array_obs_per_s": _rate(frames(frames_array, decode_payload), min_s),
        "msgpack_map_obs_per_s": _rate(frames(frames_map, decode_payload), min_s),
        "json_map_obs_per_s": _rate(frames(frames_json, json.loads), min_s),
        "validate_obs_per_s": _rate(validate, min_s),
    }
    rates["f3411_decode_single_messages_per_s"] = _rate(decode_singles, min_s)
    # A pack decodes all of its messages at once: the same figure per message.
    rates["f3411_decode_pack_messages_per_s"] = rates["f3411_decode_packs_per_s"] * per_pack
    out: dict[str, Any] = {"items": n, "pack_bytes": len(wire[0]),
                           "message_bytes": len(singles[0]), "messages_per_pack": per_pack}
    out.update({k: round(v) for k, v in rates.items()})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--min-s", type=float, default=1.0, help="seconds per measurement")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.n, args.min_s), indent=2))


if __name__ == "__main__":
    main()
