"""ASTM F3411 (Open Drone ID) codec: golden vectors, round trips, unknown values, malformed input,
time placement in the hour, and joining messages into observations."""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ingest.codecs.odid import (
    Authentication,
    BasicId,
    Location,
    MessagePack,
    OdidAssembler,
    OperatorId,
    SelfId,
    System,
    decode,
    encode,
    place_in_hour,
)
from lowalt.errors import DecodeError
from tests.conftest import GOLDEN

VECTORS = json.loads((GOLDEN / "odid_vectors.json").read_text())
HOUR = 1_764_000_000.0  # a full UTC hour (2025-11-24T16:00Z)
FUZZ = settings(database=None, deadline=None, max_examples=400)
PROPERTY = settings(database=None, deadline=None, max_examples=200)
T = TypeVar("T")

# Half the encoding resolution of each float field.
TOLERANCE = {
    "lat": 0.5e-7,
    "lon": 0.5e-7,
    "pressure_alt_m": 0.25,
    "geodetic_alt_m": 0.25,
    "height_m": 0.25,
    "speed_mps": 0.125,
    "vspeed_mps": 0.25,
    "track_deg": 0.5,
    "timestamp_s_past_hour": 0.05,
    "timestamp_accuracy_s": 0.05,
}


def _vector(name: str) -> bytes:
    return bytes.fromhex(VECTORS[name]["hex"])


def _assert_fields(message: object, expect: dict[str, Any]) -> None:
    for key, value in expect.items():
        got = getattr(message, key)
        if isinstance(value, float):
            assert got == pytest.approx(value, abs=TOLERANCE[key]), key
        else:
            assert got == value, key


def _location_bytes(**fields: int) -> bytes:
    """A Location message built byte by byte, to reach encodings encode() never writes."""
    raw = bytearray(_vector("location"))
    offsets = {"flags": 1, "track": 2, "speed": 3, "vspeed": 4, "ts_acc": 23}
    for name, value in fields.items():
        if name in offsets:
            raw[offsets[name]] = value & 0xFF
        elif name in ("lat", "lon"):
            off = 5 if name == "lat" else 9
            raw[off : off + 4] = value.to_bytes(4, "little", signed=True)
        else:
            off = {"pressure": 13, "geodetic": 15, "height": 17, "ts": 21}[name]
            raw[off : off + 2] = value.to_bytes(2, "little")
    return bytes(raw)


# Golden vectors


def test_location_vector_decodes_to_expected_values() -> None:
    message = decode(_vector("location"))
    assert isinstance(message, Location)
    _assert_fields(message, VECTORS["location"]["expect"])


def test_basic_id_vector_decodes_to_expected_values() -> None:
    message = decode(_vector("basic_id"))
    assert isinstance(message, BasicId)
    _assert_fields(message, VECTORS["basic_id"]["expect"])


def test_message_pack_vector_decodes_to_expected_values() -> None:
    pack = decode(_vector("message_pack"))
    assert isinstance(pack, MessagePack)
    expect = dict(VECTORS["message_pack"]["expect"])
    assert [m.kind for m in pack.messages] == expect.pop("contains")
    _assert_fields(pack, expect)
    assert pack.messages[0] == decode(_vector("basic_id"))
    assert pack.messages[1] == decode(_vector("location"))


@pytest.mark.parametrize("name", ["location", "basic_id", "message_pack"])
def test_vectors_round_trip_exactly(name: str) -> None:
    assert encode(decode(_vector(name))) == _vector(name)


# Unknown and out-of-range encodings


def test_unknown_location_is_none_and_encodes_to_the_standards_markers() -> None:
    wire = encode(Location())
    assert wire.hex() == "1203b5ff7e" + "00" * 14 + "0000" + "ffff" + "0000"
    assert decode(wire) == Location()
    unknown = decode(wire)
    assert isinstance(unknown, Location)
    for name in ("track_deg", "speed_mps", "vspeed_mps", "lat", "lon", "pressure_alt_m"):
        assert getattr(unknown, name) is None, name
    assert unknown.geodetic_alt_m is None and unknown.height_m is None
    assert unknown.timestamp_s_past_hour is None and unknown.timestamp_accuracy_s is None
    assert unknown.horiz_accuracy_m is None and unknown.vert_accuracy_m is None


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"flags": 0x22, "track": 180}, "track_deg"),  # E/W set: 360 deg
        ({"flags": 0x22, "track": 200}, "track_deg"),  # 380 deg
        ({"vspeed": 125}, "vspeed_mps"),  # 62.5 m/s, past the +-62 range
        ({"vspeed": -128}, "vspeed_mps"),
        ({"lat": 900_000_001}, "lat"),
        ({"lon": -1_800_000_001}, "lon"),
        ({"ts": 36001}, "timestamp_s_past_hour"),
        ({"pressure": 0}, "pressure_alt_m"),
    ],
)
def test_out_of_range_values_read_as_unknown(fields: dict[str, int], name: str) -> None:
    message = decode(_location_bytes(**fields))
    assert getattr(message, name) is None
    assert decode(encode(message)) == message


def test_lat_zero_alone_is_the_equator_not_unknown() -> None:
    message = decode(_location_bytes(lat=0))
    assert isinstance(message, Location)
    assert message.lat == 0.0 and message.lon == pytest.approx(-122.966389)


@pytest.mark.parametrize(
    ("track_deg", "track_byte", "east_west"),
    [(0.0, 0, 0), (179.0, 179, 0), (180.0, 0, 1), (216.0, 36, 1), (359.0, 179, 1)],
)
def test_track_uses_the_east_west_bit(track_deg: float, track_byte: int, east_west: int) -> None:
    wire = encode(Location(track_deg=track_deg))
    assert wire[2] == track_byte and (wire[1] >> 1) & 1 == east_west
    assert decode(wire) == Location(track_deg=track_deg)


@pytest.mark.parametrize(
    ("speed_mps", "speed_byte", "multiplier", "decoded"),
    [
        (0.0, 0, 0, 0.0),
        (5.5, 22, 0, 5.5),
        (63.75, 255, 0, 63.75),  # the largest speed without the multiplier
        (64.5, 1, 1, 64.5),
        (254.25, 254, 1, 254.25),  # the largest speed there is
        (300.0, 254, 1, 254.25),  # faster is written as 254.25, as F3411 says
    ],
)
def test_speed_uses_the_multiplier(
    speed_mps: float, speed_byte: int, multiplier: int, decoded: float
) -> None:
    wire = encode(Location(speed_mps=speed_mps))
    assert wire[3] == speed_byte and wire[1] & 1 == multiplier
    assert decode(wire) == Location(speed_mps=decoded)


def test_vertical_speed_limits() -> None:
    assert decode(encode(Location(vspeed_mps=62.0))) == Location(vspeed_mps=62.0)
    assert decode(encode(Location(vspeed_mps=-62.0))) == Location(vspeed_mps=-62.0)
    assert decode(encode(Location(vspeed_mps=80.0))) == Location(vspeed_mps=62.0)
    assert encode(Location(vspeed_mps=-62.0))[4] == 0x84  # int8 -124


def test_non_canonical_speed_is_read_and_normalised() -> None:
    message = decode(_location_bytes(flags=0x27, speed=0))  # multiplier 1, n 0: 63.75 m/s
    assert isinstance(message, Location) and message.speed_mps == 63.75
    assert encode(message)[3] == 255 and encode(message)[1] & 1 == 0


def test_reserved_bits_are_ignored_and_written_as_zero() -> None:
    raw = bytearray(_vector("location"))
    raw[1] |= 0x08
    raw[23] |= 0xF0
    raw[24] = 0xAA
    assert decode(bytes(raw)) == decode(_vector("location"))
    assert encode(decode(bytes(raw))) == _vector("location")


# Other message types


def test_system_message_round_trip_and_fields() -> None:
    system = System(
        operator_location_type="live_gnss",
        classification_type="eu",
        operator_lat=29.7192,
        operator_lon=106.6417,
        area_count=3,
        area_radius_m=120,
        area_ceiling_m=150.0,
        area_floor_m=-10.5,
        ua_category="specific",
        ua_class="class_2",
        operator_alt_m=312.5,
        timestamp_unix_s=1_764_000_000,
    )
    wire = encode(system)
    assert len(wire) == 25 and wire[0] == 0x42
    assert wire[1] == 0b000_001_01 and wire[12] == 12 and wire[17] == 0x23
    assert decode(wire) == system
    assert decode(encode(System())) == System()


def test_authentication_page_kept_raw() -> None:
    data = bytes([3, 60]) + (1_764_000_000 - 1_546_300_800).to_bytes(4, "little") + bytes(range(17))
    page0 = Authentication(auth_type="message_set_signature", page=0, data=data)
    wire = encode(page0)
    assert wire[1] == 0x30 and wire[2:] == data
    decoded = decode(wire)
    assert decoded == page0
    assert isinstance(decoded, Authentication)
    assert (decoded.last_page_index, decoded.length) == (3, 60)
    assert decoded.timestamp_unix_s == 1_764_000_000
    page2 = decode(encode(Authentication(auth_type="private_12", page=2, data=b"\xff" * 23)))
    assert isinstance(page2, Authentication)
    assert page2.auth_type == "private_12" and page2.page == 2 and page2.last_page_index is None


def test_self_id_and_operator_id() -> None:
    self_id = SelfId(description_type="emergency", description="Motor failure, landing")
    assert decode(encode(self_id)) == self_id
    operator = OperatorId(operator_id="CHN-OP-000123")
    assert decode(encode(operator)) == operator
    assert encode(operator)[22:] == b"\x00\x00\x00"
    raw = bytearray(encode(self_id))
    raw[1] = 250
    decoded = decode(bytes(raw))
    assert isinstance(decoded, SelfId) and decoded.description_type == "private_250"
    assert encode(decoded) == bytes(raw)


def test_reserved_codes_and_non_ascii_text_survive_a_round_trip() -> None:
    raw = bytearray(_vector("basic_id"))
    raw[1] = 0x7F  # id type 7 (reserved), ua type 15 (other)
    raw[2] = 0xE9  # not ASCII: kept byte for byte
    message = decode(bytes(raw))
    assert isinstance(message, BasicId)
    assert (message.id_type, message.ua_type) == ("reserved_7", "other")
    assert message.uas_id.startswith("\xe9")
    assert encode(message) == bytes(raw)


def test_encode_rejects_what_cannot_be_written() -> None:
    bad: list[Any] = [
        Location(lat=91.0, lon=0.0),
        Location(lat=10.0),
        Location(geodetic_alt_m=-1001.0),
        Location(geodetic_alt_m=40000.0),
        Location(speed_mps=-1.0),
        Location(track_deg=360.0),
        Location(timestamp_s_past_hour=3600.1),
        Location(status="flying"),
        Location(horiz_accuracy=16),
        Location(lat=math.nan, lon=0.0),
        BasicId(uas_id="X" * 21),
        SelfId(description="\u4e2d\u6587"),
        MessagePack(tuple([BasicId()] * 10)),
        MessagePack((MessagePack(),)),  # type: ignore[arg-type]
        System(timestamp_unix_s=1_500_000_000),
        System(area_radius_m=3000),
    ]
    for message in bad:
        with pytest.raises(ValueError):
            encode(message)


# Malformed input


LOCATION = _vector("location")
BASIC_ID = _vector("basic_id")


@pytest.mark.parametrize(
    ("data", "offset", "reason"),
    [
        (b"", 0, "empty"),
        (LOCATION[:24], 24, "24 bytes"),
        (LOCATION + b"\x00", 25, "26 bytes"),
        (bytes([0x62]) + LOCATION[1:], 0, "reserved message type 0x6"),
        (bytes([0xE2]) + LOCATION[1:], 0, "reserved message type 0xE"),
        (b"\xf2\x19", 2, "truncated"),
        (b"\xf2\x18\x01" + BASIC_ID, 1, "24-byte"),
        (b"\xf2\x19\x0a" + BASIC_ID * 10, 2, "at most 9"),
        (b"\xf2\x19\x02" + BASIC_ID, 28, "expected 53"),
        (b"\xf2\x19\x01" + BASIC_ID + b"\x00", 28, "expected 28"),
        (b"\xf2\x19\x01" + bytes([0xF2]) + bytes(24), 3, "inside a message pack"),
        (b"\xf2\x19\x02" + BASIC_ID + bytes([0x92]) + bytes(24), 28, "reserved message type 0x9"),
    ],
)
def test_malformed_input_raises_decode_error(data: bytes, offset: int, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(data)
    assert caught.value.fmt == "f3411"
    assert caught.value.offset == offset
    assert reason in caught.value.reason


@pytest.mark.parametrize("data", ["12ab", None, 25, memoryview(LOCATION)])
def test_non_bytes_raise_decode_error(data: Any) -> None:
    with pytest.raises(DecodeError):
        decode(data)


def test_empty_pack_is_valid() -> None:
    assert decode(b"\xf2\x19\x00") == MessagePack(())
    assert encode(MessagePack(())) == b"\xf2\x19\x00"


@FUZZ
@given(st.binary(max_size=300))
@example(b"\xf0")
@example(b"\xf2\x19\x09" + bytes(225))
def test_random_bytes_only_ever_raise_decode_error(data: bytes) -> None:
    try:
        message = decode(data)
    except DecodeError:
        return
    assert decode(encode(message)) == message


@FUZZ
@given(st.integers(0, 0xFF), st.integers(0, 12), st.binary(max_size=260))
def test_random_packs_only_ever_raise_decode_error(version: int, count: int, body: bytes) -> None:
    data = bytes([0xF0 | (version & 0x0F), 25, count]) + body
    try:
        message = decode(data)
    except DecodeError:
        return
    assert decode(encode(message)) == message


@FUZZ
@given(st.integers(0, 5), st.integers(0, 15), st.binary(min_size=24, max_size=24))
def test_every_single_message_decodes_and_normalises_stably(
    msg_type: int, version: int, body: bytes
) -> None:
    message = decode(bytes([msg_type << 4 | version]) + body)
    assert message.msg_type == msg_type and message.proto_version == version
    assert decode(encode(message)) == message


# Round trips of valid messages (every value on the encoding grid)


def _or_none(values: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    return st.one_of(st.none(), values)


ALTITUDE = _or_none(st.integers(1, 0xFFFF).map(lambda n: n * 0.5 - 1000.0))
POSITION = st.one_of(
    st.just((None, None)),
    st.tuples(st.integers(-900_000_000, 900_000_000), st.integers(1, 1_800_000_000))
    .map(lambda p: (p[0] / 1e7, p[1] / 1e7)),
    st.tuples(st.integers(-900_000_000, 900_000_000), st.integers(-1_800_000_000, -1))
    .map(lambda p: (p[0] / 1e7, p[1] / 1e7)),
)  # fmt: skip
SPEED = _or_none(
    st.one_of(
        st.integers(0, 255).map(lambda n: n * 0.25),
        st.integers(1, 254).map(lambda n: n * 0.75 + 63.75),
    )
)
NAMED_OR_RESERVED = {
    "status": ["undeclared", "ground", "airborne", "emergency", "remote_id_system_failure"],
    "id_type": ["none", "serial_number", "caa_registration", "utm_uuid", "specific_session"],
}


def _four_bit(names: list[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(names), st.integers(len(names), 15).map(lambda n: f"reserved_{n}")
    )


LATIN1_TEXT = st.lists(st.integers(1, 255).map(chr), max_size=20).map("".join)


@st.composite
def locations(draw: st.DrawFn) -> Location:
    lat, lon = draw(POSITION)
    return Location(
        status=draw(_four_bit(NAMED_OR_RESERVED["status"])),
        height_type=draw(st.sampled_from(["takeoff", "agl"])),
        track_deg=draw(_or_none(st.integers(0, 359).map(float))),
        speed_mps=draw(SPEED),
        vspeed_mps=draw(_or_none(st.integers(-124, 124).map(lambda n: n * 0.5))),
        lat=lat,
        lon=lon,
        pressure_alt_m=draw(ALTITUDE),
        geodetic_alt_m=draw(ALTITUDE),
        height_m=draw(ALTITUDE),
        horiz_accuracy=draw(st.integers(0, 15)),
        vert_accuracy=draw(st.integers(0, 15)),
        baro_accuracy=draw(st.integers(0, 15)),
        speed_accuracy=draw(st.integers(0, 15)),
        timestamp_s_past_hour=draw(_or_none(st.integers(0, 36000).map(lambda n: n / 10))),
        timestamp_accuracy_s=draw(_or_none(st.integers(1, 15).map(lambda n: n / 10))),
        proto_version=draw(st.integers(0, 15)),
    )


@st.composite
def systems(draw: st.DrawFn) -> System:
    lat, lon = draw(POSITION)
    return System(
        operator_location_type=draw(st.sampled_from(["takeoff", "live_gnss", "fixed"])),
        classification_type=draw(st.sampled_from(["undeclared", "eu", "reserved_5"])),
        operator_lat=lat,
        operator_lon=lon,
        area_count=draw(st.integers(0, 0xFFFF)),
        area_radius_m=draw(st.integers(0, 255).map(lambda n: n * 10)),
        area_ceiling_m=draw(ALTITUDE),
        area_floor_m=draw(ALTITUDE),
        ua_category=draw(st.sampled_from(["undeclared", "open", "specific", "certified"])),
        ua_class=draw(st.sampled_from(["undeclared", "class_0", "class_6", "reserved_9"])),
        operator_alt_m=draw(ALTITUDE),
        timestamp_unix_s=draw(_or_none(st.integers(1_546_300_801, 1_546_300_800 + 0xFFFF_FFFF))),
        proto_version=draw(st.integers(0, 15)),
    )


SINGLE_MESSAGES = st.one_of(
    locations(),
    systems(),
    st.builds(
        BasicId,
        id_type=_four_bit(NAMED_OR_RESERVED["id_type"]),
        ua_type=st.sampled_from(["none", "aeroplane", "helicopter_or_multirotor", "other"]),
        uas_id=LATIN1_TEXT,
    ),
    st.builds(
        Authentication,
        auth_type=st.sampled_from(["none", "uas_id_signature", "reserved_7", "private_15"]),
        page=st.integers(0, 15),
        data=st.binary(min_size=23, max_size=23),
    ),
    st.builds(
        SelfId,
        description_type=st.sampled_from(["text", "emergency", "extended_status", "reserved_3"]),
        description=LATIN1_TEXT,
    ),
    st.builds(OperatorId, operator_id=LATIN1_TEXT),
)


@PROPERTY
@given(SINGLE_MESSAGES)
def test_valid_messages_round_trip(message: Any) -> None:
    wire = encode(message)
    assert len(wire) == 25
    assert decode(wire) == message
    assert encode(decode(wire)) == wire


@PROPERTY
@given(st.lists(SINGLE_MESSAGES, max_size=9), st.integers(0, 15))
def test_valid_packs_round_trip(messages: list[Any], version: int) -> None:
    pack = MessagePack(tuple(messages), version)
    wire = encode(pack)
    assert len(wire) == 3 + 25 * len(messages)
    assert decode(wire) == pack
    assert encode(decode(wire)) == wire


# Placing the timestamp in the hour


@pytest.mark.parametrize(
    ("s_past_hour", "receive_t", "expected"),
    [
        (360.5, HOUR + 361.0, HOUR + 360.5),
        (3599.0, HOUR + 1.0, HOUR - 1.0),  # sent just before the hour, received just after
        (1.0, HOUR - 1.0, HOUR + 1.0),  # a sender clock slightly ahead, across the hour
        (3600.0, HOUR + 1.0, HOUR),
        (0.0, HOUR + 1800.0, HOUR),  # a tie goes to the earlier instant
        (1800.0, HOUR + 3600.0, HOUR + 1800.0),
        (0.0, HOUR + 1800.5, HOUR + 3600.0),
    ],
)
def test_place_in_hour(s_past_hour: float, receive_t: float, expected: float) -> None:
    assert place_in_hour(s_past_hour, receive_t) == pytest.approx(expected, abs=1e-6)


@PROPERTY
@given(st.integers(0, 36000), st.floats(1.5e9, 2.0e9))
def test_place_in_hour_is_the_nearest_instant(tenths: int, receive_t: float) -> None:
    t = place_in_hour(tenths / 10, receive_t)
    assert -1800.0 - 1e-6 <= t - receive_t <= 1800.0 + 1e-6
    offset = (t - tenths / 10) % 3600.0
    assert min(offset, 3600.0 - offset) < 1e-5


# Joining messages into observations


def _basic_id_message(uas_id: str, id_type: str = "serial_number") -> BasicId:
    return BasicId(id_type=id_type, ua_type="helicopter_or_multirotor", uas_id=uas_id)


def _location_message(**fields: Any) -> Location:
    values: dict[str, Any] = {
        "status": "airborne",
        "lat": 29.72,
        "lon": 106.64,
        "geodetic_alt_m": 410.0,
        "timestamp_s_past_hour": 100.0,
    }
    values.update(fields)
    return Location(**values)


def _basic_id(uas_id: str, id_type: str = "serial_number") -> bytes:
    return encode(_basic_id_message(uas_id, id_type))


def _location(**fields: Any) -> bytes:
    return encode(_location_message(**fields))


def test_golden_pack_becomes_one_observation() -> None:
    assembler = OdidAssembler()
    observations, errors = assembler.feed(
        [{"t": HOUR + 361.0, "msg": _vector("message_pack"), "src": "AA:BB:CC:00:11:22"}]
    )
    assert errors == []
    assert observations == [
        {
            "uav": "1596F3B2A0001234",
            "t": pytest.approx(HOUR + 360.5),
            "lat": pytest.approx(45.539309, abs=1e-7),
            "lon": pytest.approx(-122.966389, abs=1e-7),
            "alt_m": 110.0,
            "agl_m": 80.0,
            "speed_mps": 5.5,
            "track_deg": 216.0,
            "vspeed_mps": 5.0,
            "status": "airborne",
            "acc_h_m": 3.0,  # category 11: < 3 m
            "acc_v_m": 1.0,  # category 6: < 1 m
            "format": "f3411",
        }
    ]


def test_pack_without_src_is_self_contained() -> None:
    observations, errors = OdidAssembler().feed([{"t": HOUR, "msg": _vector("message_pack")}])
    assert errors == [] and observations[0]["uav"] == "1596F3B2A0001234"


def test_location_joins_the_basic_id_of_its_src_across_feeds() -> None:
    assembler = OdidAssembler()
    assert assembler.feed([{"t": HOUR, "msg": _basic_id("SN-A"), "src": "a"}]) == ([], [])
    observations, errors = assembler.feed(
        [
            {"t": HOUR + 101.0, "msg": _location(), "src": "a"},
            {"t": HOUR + 101.0, "msg": _location(), "src": "b"},
            {"t": HOUR + 101.0, "msg": _basic_id("SN-B"), "src": "b"},
            {"t": HOUR + 102.0, "msg": _location(lat=29.73), "src": "b"},
        ]
    )
    assert [(o["uav"], o["lat"]) for o in observations] == [("SN-A", 29.72), ("SN-B", 29.73)]
    assert errors == [(1, "location without basic id for src 'b'")]


def test_location_without_src_is_not_guessed() -> None:
    assembler = OdidAssembler()
    observations, errors = assembler.feed(
        [{"t": HOUR, "msg": _basic_id("SN-A")}, {"t": HOUR, "msg": _location()}]
    )
    assert observations == []
    assert len(errors) == 1 and errors[0][0] == 1
    assert errors[0][1].startswith("location without basic id for src")


def test_serial_number_is_kept_over_other_ids_of_the_same_src() -> None:
    assembler = OdidAssembler()
    assembler.feed([{"t": HOUR, "msg": _basic_id("REG-1", "caa_registration"), "src": "a"}])
    assembler.feed([{"t": HOUR, "msg": _basic_id("SN-1"), "src": "a"}])
    assembler.feed([{"t": HOUR, "msg": _basic_id("REG-1", "caa_registration"), "src": "a"}])
    observations, _ = assembler.feed([{"t": HOUR, "msg": _location(), "src": "a"}])
    assert observations[0]["uav"] == "SN-1"


def test_bad_items_are_errors_and_the_rest_still_decode() -> None:
    good = {"t": HOUR, "msg": _vector("message_pack")}
    items: list[object] = [
        good,
        "not a map",
        {"msg": _vector("message_pack")},
        {"t": True, "msg": _vector("message_pack")},
        {"t": math.inf, "msg": _vector("message_pack")},
        {"t": 10**400, "msg": _vector("message_pack")},
        {"t": HOUR, "msg": "1234"},
        {"t": HOUR, "msg": _vector("message_pack"), "src": 7},
        {"t": HOUR, "msg": _vector("location")[:20]},
        {"t": HOUR, "msg": encode(BasicId())},
        good,
    ]
    observations, errors = OdidAssembler().feed(items)
    assert len(observations) == 2
    assert [index for index, _ in errors] == list(range(1, 10))
    assert errors[7][1] == "f3411 at byte 20: message is 20 bytes, expected 25"
    assert errors[8][1] == "basic id without a uas id"


def test_altitude_falls_back_to_pressure_altitude() -> None:
    msg = _location(geodetic_alt_m=None, pressure_alt_m=395.5, vert_accuracy=6, baro_accuracy=3)
    assembler = OdidAssembler()
    assembler.feed([{"t": HOUR, "msg": _basic_id("SN"), "src": "s"}])
    observations, errors = assembler.feed([{"t": HOUR, "msg": msg, "src": "s"}])
    assert errors == []
    assert observations[0]["alt_m"] == 395.5
    assert observations[0]["acc_v_m"] == 25.0  # the baro accuracy category, not the geodetic one


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"geodetic_alt_m": None, "pressure_alt_m": None}, "location without altitude"),
        ({"lat": None, "lon": None}, "location without position"),
    ],
)
def test_location_without_what_an_observation_needs_is_an_error(
    fields: dict[str, Any], reason: str
) -> None:
    pack = encode(MessagePack((_basic_id_message("SN"), _location_message(**fields))))
    observations, errors = OdidAssembler().feed([{"t": HOUR, "msg": pack}])
    assert observations == [] and errors[0][0] == 0 and errors[0][1].startswith(reason)


@pytest.mark.parametrize(
    ("status", "observed"),
    [
        ("undeclared", None),
        ("ground", "ground"),
        ("airborne", "airborne"),
        ("emergency", "emergency"),
        ("remote_id_system_failure", "airborne"),
        ("reserved_9", None),
    ],
)
def test_status_mapping(status: str, observed: str | None) -> None:
    assembler = OdidAssembler()
    assembler.feed([{"t": HOUR, "msg": _basic_id("SN"), "src": "s"}])
    observations, _ = assembler.feed([{"t": HOUR, "msg": _location(status=status), "src": "s"}])
    assert observations[0].get("status") == observed


def test_unknown_values_are_left_out_and_unknown_timestamp_uses_receive_time() -> None:
    assembler = OdidAssembler()
    assembler.feed([{"t": HOUR, "msg": _basic_id("SN"), "src": "s"}])
    msg = _location(status="undeclared", timestamp_s_past_hour=None, height_m=50.0)
    observations, _ = assembler.feed([{"t": HOUR + 5.25, "msg": msg, "src": "s"}])
    # height_m is above take-off here, so it is not agl_m
    assert observations == [
        {"uav": "SN", "t": HOUR + 5.25, "lat": 29.72, "lon": 106.64, "alt_m": 410.0}
        | {"format": "f3411"}
    ]


def test_timestamp_before_the_hour_lands_in_the_previous_hour() -> None:
    assembler = OdidAssembler()
    location = _location_message(timestamp_s_past_hour=3599.0)
    pack = encode(MessagePack((_basic_id_message("SN"), location)))
    observations, _ = assembler.feed([{"t": HOUR + 1.0, "msg": pack}])
    assert observations[0]["t"] == pytest.approx(HOUR - 1.0)


def test_operator_position_is_kept_per_uav() -> None:
    system = encode(System(operator_lat=29.7, operator_lon=106.6))
    assembler = OdidAssembler()
    # System before Basic ID from the same src: kept until the UA is known.
    assert assembler.feed([{"t": HOUR, "msg": system, "src": "a"}]) == ([], [])
    assert assembler.operator_positions == {}
    assembler.feed([{"t": HOUR, "msg": _basic_id("SN-A"), "src": "a"}])
    assert assembler.operator_positions == {"SN-A": (29.7, 106.6)}
    # In a pack without src.
    pack = encode(
        MessagePack((_basic_id_message("SN-B"), System(operator_lat=29.8, operator_lon=106.5)))
    )
    assert assembler.feed([{"t": HOUR, "msg": pack}]) == ([], [])
    assert assembler.operator_positions["SN-B"] == (29.8, 106.5)
    # Alone without src: nobody to give it to.
    _, errors = assembler.feed([{"t": HOUR, "msg": system}])
    assert errors == [(0, "system message without basic id for src (none)")]


ITEM_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.binary(max_size=80),
    st.sampled_from([_vector("message_pack"), _vector("location"), _vector("basic_id")]),
    st.sampled_from(["a", "b", ""]),
)
ITEMS = st.lists(
    st.one_of(
        ITEM_VALUES,
        st.dictionaries(st.sampled_from(["t", "msg", "src", "x"]), ITEM_VALUES, max_size=4),
        st.fixed_dictionaries(
            {"t": st.floats(1.5e9, 2e9), "msg": st.binary(min_size=25, max_size=25)},
            optional={"src": st.sampled_from(["a", "b"])},
        ),
    ),
    max_size=12,
)


@FUZZ
@given(ITEMS)
def test_assembler_never_raises(items: list[object]) -> None:
    observations, errors = OdidAssembler().feed(items)
    assert len({index for index, _ in errors}) == len(errors)
    assert all(0 <= index < len(items) for index, _ in errors)
    for obs in observations:
        assert obs["format"] == "f3411" and isinstance(obs["uav"], str)
        assert None not in obs.values()
