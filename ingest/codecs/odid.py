"""ASTM F3411 broadcast Remote ID (Open Drone ID): decode, encode, and join into observations.

Every message is 25 bytes; multi-byte fields are little-endian. Byte 0 of every message:

    bits 7-4  message type: 0x0 Basic ID, 0x1 Location, 0x2 Authentication, 0x3 Self-ID,
              0x4 System, 0x5 Operator ID, 0xF Message Pack (0x6-0xE reserved: DecodeError)
    bits 3-0  protocol version (0 F3411-19, 1 F3411-20, 2 F3411-22a), kept as received

"(?)" marks the standard's "invalid, no value or unknown" encoding: it decodes to None and
None encodes to it.

Basic ID (0x0)
    byte  1      bits 7-4 id_type: 0 none, 1 serial_number (ANSI/CTA-2063-A),
                 2 caa_registration, 3 utm_uuid, 4 specific_session
                 bits 3-0 ua_type: 0 none, 1 aeroplane, 2 helicopter_or_multirotor, 3 gyroplane,
                 4 hybrid_lift, 5 ornithopter, 6 glider, 7 kite, 8 free_balloon,
                 9 captive_balloon, 10 airship, 11 free_fall_parachute, 12 rocket,
                 13 tethered_powered_aircraft, 14 ground_obstacle, 15 other
    bytes 2-21   uas_id            ASCII, NUL-padded
    bytes 22-24  reserved

Location (0x1)
    byte  1      bits 7-4 status: 0 undeclared, 1 ground, 2 airborne, 3 emergency,
                 4 remote_id_system_failure;   bit 3 reserved;
                 bit 2 height_type: 0 takeoff (above the take-off point), 1 agl;
                 bit 1 E/W direction: track is byte 2 + 180;   bit 0 speed multiplier
    byte  2      track_deg         uint8, 1 deg; 0..179, with the E/W bit 180..359;
                                   361 (E/W bit, 181) (?)
    byte  3      speed_mps         uint8 n; multiplier 0: n * 0.25 (0..63.75 m/s);
                                   multiplier 1: n * 0.75 + 63.75 (63.75..254.25 m/s);
                                   255 m/s (multiplier 1, n = 255) (?)
    byte  4      vspeed_mps        int8 n * 0.5 m/s, up positive, -62..62; 63 (n = 126) (?)
    bytes 5-8    lat               int32 n * 1e-7 deg
    bytes 9-12   lon               int32 n * 1e-7 deg;   lat = lon = 0 (?)
    bytes 13-14  pressure_alt_m    uint16 n * 0.5 - 1000 m, ref. 1013.25 hPa;  n = 0 (-1000 m) (?)
    bytes 15-16  geodetic_alt_m    same encoding, height above the WGS84 ellipsoid
    bytes 17-18  height_m          same encoding, above take-off or ground as height_type says
    byte  19     bits 7-4 vert_accuracy,  bits 3-0 horiz_accuracy     (categories below)
    byte  20     bits 7-4 baro_accuracy,  bits 3-0 speed_accuracy
    bytes 21-22  timestamp_s_past_hour  uint16 n * 0.1 s after the full UTC hour, 0..36000;
                                   0xFFFF (?)
    byte  23     bits 3-0 timestamp_accuracy_s  n * 0.1 s, 0 (?);   bits 7-4 reserved
    byte  24     reserved

    Accuracy categories, 95 % bounds (0 unknown, codes past the last reserved):
    horiz_accuracy   1 <18.52 km, 2 <7.408 km, 3 <3.704 km, 4 <1852 m, 5 <926 m, 6 <555.6 m,
                     7 <185.2 m, 8 <92.6 m, 9 <30 m, 10 <10 m, 11 <3 m, 12 <1 m
    vert_, baro_     1 <150 m, 2 <45 m, 3 <25 m, 4 <10 m, 5 <3 m, 6 <1 m
    speed_accuracy   1 <10 m/s, 2 <3 m/s, 3 <1 m/s, 4 <0.3 m/s

Authentication (0x2): one page per message, the page kept raw
    byte  1      bits 7-4 auth_type: 0 none, 1 uas_id_signature, 2 operator_id_signature,
                 3 message_set_signature, 4 network_remote_id, 5 specific_authentication
                 (6-9 reserved, 10-15 private);   bits 3-0 page, 0..15
    bytes 2-24   data, 23 bytes. Page 0 opens with byte 2 last_page_index, byte 3 length
                 (bytes of authentication data over all pages), bytes 4-7 uint32 timestamp
                 (s since 2019-01-01T00:00Z); its own data is bytes 8-24

Self-ID (0x3)
    byte  1      description_type: 0 text, 1 emergency, 2 extended_status (201-255 private)
    bytes 2-24   description       ASCII, NUL-padded

System (0x4)
    byte  1      bits 7-5 reserved;  bits 4-2 classification_type: 0 undeclared, 1 eu;
                 bits 1-0 operator_location_type: 0 takeoff, 1 live_gnss, 2 fixed
    bytes 2-5    operator_lat      int32 n * 1e-7 deg
    bytes 6-9    operator_lon      int32 n * 1e-7 deg;   both 0 (?)
    bytes 10-11  area_count        uint16, aircraft in the area (default 1)
    byte  12     area_radius_m     uint8 n * 10 m
    bytes 13-14  area_ceiling_m    uint16 n * 0.5 - 1000 m;  n = 0 (?)
    bytes 15-16  area_floor_m      same encoding
    byte  17     bits 7-4 ua_category: 0 undeclared, 1 open, 2 specific, 3 certified;
                 bits 3-0 ua_class: 0 undeclared, 1..7 class_0..class_6   (EU classification)
    bytes 18-19  operator_alt_m    uint16 n * 0.5 - 1000 m, WGS84;  n = 0 (?)
    bytes 20-23  timestamp_unix_s  uint32 s since 2019-01-01T00:00Z, read as Unix s;  0 (?)
    byte  24     reserved

Operator ID (0x5)
    byte  1      operator_id_type: 0 operator_id (201-255 private)
    bytes 2-21   operator_id       ASCII, NUL-padded
    bytes 22-24  reserved

Message Pack (0xF)
    byte  1      message size, always 25
    byte  2      count of messages, 0..9
    bytes 3-     count messages of 25 bytes (no pack inside a pack): exactly 3 + 25 * count bytes

Decoding is lenient where a value can still be read and strict where the bytes cannot be: reserved
bits are ignored (encode writes 0); codes without a name read as "reserved_<n>" or "private_<n>"
and encode back to the same code; text is read byte for byte (latin-1), nothing lost; values
outside the standard's ranges (track of 360 deg and more, |vspeed| over 62 m/s, lat/lon outside
+-90/+-180, timestamp past 36000) read as unknown. Hence encode(decode(x)) == x for every message a
conforming sender writes (reserved bits 0, the standard's encoding of each value), and
decode(encode(decode(x))) == decode(x) for any x that decodes. A wrong length, a reserved message
type or a bad pack header raises DecodeError, and nothing else does.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, TypeAlias, TypeVar

from lowalt.errors import DecodeError

__all__ = [
    "EPOCH_2019",
    "FMT",
    "HORIZ_ACCURACY_M",
    "MESSAGE_SIZE",
    "PACK_MAX_MESSAGES",
    "SPEED_ACCURACY_MPS",
    "VERT_ACCURACY_M",
    "Authentication",
    "BasicId",
    "Location",
    "Message",
    "MessagePack",
    "OdidAssembler",
    "OperatorId",
    "SelfId",
    "SingleMessage",
    "System",
    "decode",
    "encode",
    "place_in_hour",
]

FMT = "f3411"
MESSAGE_SIZE = 25
PACK_MAX_MESSAGES = 9
EPOCH_2019 = 1_546_300_800  # 2019-01-01T00:00:00Z, the origin of F3411's 32-bit timestamps

_BASIC_ID = struct.Struct("<BB20s3x")
_LOCATION = struct.Struct("<BBBBbiiHHHBBHBx")
_AUTH = struct.Struct("<BB23s")
_AUTH_PAGE_ZERO = struct.Struct("<BBI")
_SELF_ID = struct.Struct("<BB23s")
_SYSTEM = struct.Struct("<BBiiHBHHBHIx")
_OPERATOR_ID = struct.Struct("<BB20s3x")
_PACK_HEADER = struct.Struct("<BBB")


class _Codes:
    """Names of one wire enum. Unnamed codes read as reserved_<n> (private_<n> past private_from),
    so that every code decodes and encodes back to itself."""

    __slots__ = ("by_name", "field", "names")

    def __init__(self, field: str, bits: int, *named: str, private_from: int | None = None) -> None:
        names = list(named)
        for code in range(len(named), 1 << bits):
            private = private_from is not None and code >= private_from
            names.append(f"{'private' if private else 'reserved'}_{code}")
        self.field = field
        self.names = tuple(names)
        self.by_name = {name: code for code, name in enumerate(names)}

    def code(self, name: str) -> int:
        try:
            return self.by_name[name]
        except KeyError:
            raise ValueError(f"{self.field}: unknown value {name!r}") from None


_ID_TYPE = _Codes(
    "id_type", 4, "none", "serial_number", "caa_registration", "utm_uuid", "specific_session"
)
_UA_TYPE = _Codes(
    "ua_type", 4, "none", "aeroplane", "helicopter_or_multirotor", "gyroplane", "hybrid_lift",
    "ornithopter", "glider", "kite", "free_balloon", "captive_balloon", "airship",
    "free_fall_parachute", "rocket", "tethered_powered_aircraft", "ground_obstacle", "other",
)  # fmt: skip
_STATUS = _Codes(
    "status", 4, "undeclared", "ground", "airborne", "emergency", "remote_id_system_failure"
)
_HEIGHT_TYPE = _Codes("height_type", 1, "takeoff", "agl")
_AUTH_TYPE = _Codes(
    "auth_type", 4, "none", "uas_id_signature", "operator_id_signature",
    "message_set_signature", "network_remote_id", "specific_authentication", private_from=10,
)  # fmt: skip
_DESCRIPTION_TYPE = _Codes(
    "description_type", 8, "text", "emergency", "extended_status", private_from=201
)
_OPERATOR_LOCATION_TYPE = _Codes("operator_location_type", 2, "takeoff", "live_gnss", "fixed")
_CLASSIFICATION_TYPE = _Codes("classification_type", 3, "undeclared", "eu")
_UA_CATEGORY = _Codes("ua_category", 4, "undeclared", "open", "specific", "certified")
_UA_CLASS = _Codes("ua_class", 4, "undeclared", *(f"class_{n}" for n in range(7)))
_OPERATOR_ID_TYPE = _Codes("operator_id_type", 8, "operator_id", private_from=201)

# Accuracy category -> its upper bound (metres, m/s); unknown and reserved codes are absent.
HORIZ_ACCURACY_M: dict[int, float] = {
    1: 18520.0, 2: 7408.0, 3: 3704.0, 4: 1852.0, 5: 926.0, 6: 555.6,
    7: 185.2, 8: 92.6, 9: 30.0, 10: 10.0, 11: 3.0, 12: 1.0,
}  # fmt: skip
VERT_ACCURACY_M: dict[int, float] = {1: 150.0, 2: 45.0, 3: 25.0, 4: 10.0, 5: 3.0, 6: 1.0}
SPEED_ACCURACY_MPS: dict[int, float] = {1: 10.0, 2: 3.0, 3: 1.0, 4: 0.3}


# Messages. Plain (not frozen) slotted dataclasses: frozen ones cost ~8x more to build, and
# decode builds one per message on the hot path.


@dataclass(slots=True)
class BasicId:
    """Basic ID (0x0): the UAS ID and what kind of aircraft it is."""

    msg_type: ClassVar[int] = 0x0
    kind: ClassVar[str] = "basic_id"
    id_type: str = "none"
    ua_type: str = "none"
    uas_id: str = ""
    proto_version: int = 2


@dataclass(slots=True)
class Location:
    """Location/vector (0x1): where the UA is and how it moves; None where unknown."""

    msg_type: ClassVar[int] = 0x1
    kind: ClassVar[str] = "location"
    status: str = "undeclared"
    height_type: str = "takeoff"
    track_deg: float | None = None
    speed_mps: float | None = None
    vspeed_mps: float | None = None
    lat: float | None = None
    lon: float | None = None
    pressure_alt_m: float | None = None
    geodetic_alt_m: float | None = None
    height_m: float | None = None
    horiz_accuracy: int = 0
    vert_accuracy: int = 0
    baro_accuracy: int = 0
    speed_accuracy: int = 0
    timestamp_s_past_hour: float | None = None
    timestamp_accuracy_s: float | None = None
    proto_version: int = 2

    @property
    def horiz_accuracy_m(self) -> float | None:
        return HORIZ_ACCURACY_M.get(self.horiz_accuracy)

    @property
    def vert_accuracy_m(self) -> float | None:
        return VERT_ACCURACY_M.get(self.vert_accuracy)

    @property
    def baro_accuracy_m(self) -> float | None:
        return VERT_ACCURACY_M.get(self.baro_accuracy)

    @property
    def speed_accuracy_mps(self) -> float | None:
        return SPEED_ACCURACY_MPS.get(self.speed_accuracy)


@dataclass(slots=True)
class Authentication:
    """Authentication (0x2): one page, its 23 data bytes kept raw (pages are not assembled)."""

    msg_type: ClassVar[int] = 0x2
    kind: ClassVar[str] = "authentication"
    auth_type: str = "none"
    page: int = 0
    data: bytes = bytes(23)
    proto_version: int = 2

    @property
    def last_page_index(self) -> int | None:
        """Page 0 only: the number of the last page."""
        return self.data[0] if self.page == 0 and len(self.data) >= 1 else None

    @property
    def length(self) -> int | None:
        """Page 0 only: bytes of authentication data over all pages."""
        return self.data[1] if self.page == 0 and len(self.data) >= 2 else None

    @property
    def timestamp_unix_s(self) -> int | None:
        """Page 0 only: the signature's time."""
        if self.page != 0 or len(self.data) < _AUTH_PAGE_ZERO.size:
            return None
        return EPOCH_2019 + int(_AUTH_PAGE_ZERO.unpack_from(self.data)[2])


@dataclass(slots=True)
class SelfId:
    """Self-ID (0x3): the operator's free text about the flight."""

    msg_type: ClassVar[int] = 0x3
    kind: ClassVar[str] = "self_id"
    description_type: str = "text"
    description: str = ""
    proto_version: int = 2


@dataclass(slots=True)
class System:
    """System (0x4): operator position, the area of a group of UA, and EU classification."""

    msg_type: ClassVar[int] = 0x4
    kind: ClassVar[str] = "system"
    operator_location_type: str = "takeoff"
    classification_type: str = "undeclared"
    operator_lat: float | None = None
    operator_lon: float | None = None
    area_count: int = 1
    area_radius_m: int = 0
    area_ceiling_m: float | None = None
    area_floor_m: float | None = None
    ua_category: str = "undeclared"
    ua_class: str = "undeclared"
    operator_alt_m: float | None = None
    timestamp_unix_s: int | None = None
    proto_version: int = 2


@dataclass(slots=True)
class OperatorId:
    """Operator ID (0x5): the operator's registration."""

    msg_type: ClassVar[int] = 0x5
    kind: ClassVar[str] = "operator_id"
    operator_id_type: str = "operator_id"
    operator_id: str = ""
    proto_version: int = 2


SingleMessage: TypeAlias = BasicId | Location | Authentication | SelfId | System | OperatorId


@dataclass(slots=True)
class MessagePack:
    """Message Pack (0xF): up to nine single messages broadcast together."""

    msg_type: ClassVar[int] = 0xF
    kind: ClassVar[str] = "message_pack"
    message_size: ClassVar[int] = MESSAGE_SIZE
    messages: tuple[SingleMessage, ...] = ()
    proto_version: int = 2

    @property
    def count(self) -> int:
        return len(self.messages)


Message: TypeAlias = SingleMessage | MessagePack


# Decoding


def decode(msg: bytes | bytearray) -> Message:
    """The message (or pack) in `msg`; DecodeError if it is malformed."""
    if not isinstance(msg, bytes | bytearray):
        raise DecodeError(FMT, 0, f"expected bytes, got {type(msg).__name__}")
    size = len(msg)
    if size == 0:
        raise DecodeError(FMT, 0, "empty message")
    if msg[0] >> 4 == 0xF:
        return _decode_pack(msg, size)
    if size != MESSAGE_SIZE:
        raise DecodeError(
            FMT, min(size, MESSAGE_SIZE), f"message is {size} bytes, expected {MESSAGE_SIZE}"
        )
    return _decode_single(msg, 0)


def _decode_pack(msg: bytes | bytearray, size: int) -> MessagePack:
    if size < _PACK_HEADER.size:
        raise DecodeError(FMT, size, "message pack header truncated")
    head, message_size, count = _PACK_HEADER.unpack_from(msg)
    if message_size != MESSAGE_SIZE:
        raise DecodeError(FMT, 1, f"message pack of {message_size}-byte messages, expected 25")
    if count > PACK_MAX_MESSAGES:
        raise DecodeError(FMT, 2, f"message pack of {count} messages, at most 9")
    expected = _PACK_HEADER.size + MESSAGE_SIZE * count
    if size != expected:
        raise DecodeError(
            FMT,
            min(size, expected),
            f"message pack of {count} is {size} bytes, expected {expected}",
        )
    offsets = range(_PACK_HEADER.size, expected, MESSAGE_SIZE)
    return MessagePack(tuple([_decode_single(msg, off) for off in offsets]), head & 0x0F)


def _decode_single(msg: bytes | bytearray, off: int) -> SingleMessage:
    msg_type = msg[off] >> 4
    decoder = _DECODERS[msg_type]
    if decoder is None:
        if msg_type == 0xF:
            raise DecodeError(FMT, off, "message pack inside a message pack")
        raise DecodeError(FMT, off, f"reserved message type 0x{msg_type:X}")
    return decoder(msg, off)


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\x00").decode("latin-1")


def _alt_m(raw: int) -> float | None:
    return None if raw == 0 else raw * 0.5 - 1000.0


def _position(lat: int, lon: int) -> tuple[float, float] | tuple[None, None]:
    if (lat == 0 and lon == 0) or not (
        -900_000_000 <= lat <= 900_000_000 and -1_800_000_000 <= lon <= 1_800_000_000
    ):
        return None, None
    return lat / 1e7, lon / 1e7


def _decode_basic_id(msg: bytes | bytearray, off: int) -> BasicId:
    head, types, uas_id = _BASIC_ID.unpack_from(msg, off)
    return BasicId(
        _ID_TYPE.names[types >> 4], _UA_TYPE.names[types & 0x0F], _text(uas_id), head & 0x0F
    )


def _decode_location(msg: bytes | bytearray, off: int) -> Location:
    (
        head,
        flags,
        track,
        speed,
        vspeed,
        lat_e7,
        lon_e7,
        pressure_alt,
        geodetic_alt,
        height,
        acc_vert_horiz,
        acc_baro_speed,
        timestamp,
        timestamp_acc,
    ) = _LOCATION.unpack_from(msg, off)
    if flags & 0x02:
        track += 180
    if flags & 0x01:
        speed_mps = None if speed == 255 else speed * 0.75 + 63.75
    else:
        speed_mps = speed * 0.25
    lat, lon = _position(lat_e7, lon_e7)
    timestamp_acc &= 0x0F
    return Location(
        status=_STATUS.names[flags >> 4],
        height_type="agl" if flags & 0x04 else "takeoff",
        track_deg=float(track) if track < 360 else None,
        speed_mps=speed_mps,
        vspeed_mps=vspeed * 0.5 if -124 <= vspeed <= 124 else None,
        lat=lat,
        lon=lon,
        pressure_alt_m=_alt_m(pressure_alt),
        geodetic_alt_m=_alt_m(geodetic_alt),
        height_m=_alt_m(height),
        horiz_accuracy=acc_vert_horiz & 0x0F,
        vert_accuracy=acc_vert_horiz >> 4,
        baro_accuracy=acc_baro_speed >> 4,
        speed_accuracy=acc_baro_speed & 0x0F,
        timestamp_s_past_hour=timestamp / 10 if timestamp <= 36000 else None,
        timestamp_accuracy_s=timestamp_acc / 10 if timestamp_acc else None,
        proto_version=head & 0x0F,
    )


def _decode_auth(msg: bytes | bytearray, off: int) -> Authentication:
    head, type_page, data = _AUTH.unpack_from(msg, off)
    return Authentication(_AUTH_TYPE.names[type_page >> 4], type_page & 0x0F, data, head & 0x0F)


def _decode_self_id(msg: bytes | bytearray, off: int) -> SelfId:
    head, description_type, description = _SELF_ID.unpack_from(msg, off)
    return SelfId(_DESCRIPTION_TYPE.names[description_type], _text(description), head & 0x0F)


def _decode_system(msg: bytes | bytearray, off: int) -> System:
    (
        head,
        flags,
        lat_e7,
        lon_e7,
        area_count,
        area_radius,
        ceiling,
        floor,
        classification,
        operator_alt,
        timestamp,
    ) = _SYSTEM.unpack_from(msg, off)
    lat, lon = _position(lat_e7, lon_e7)
    return System(
        operator_location_type=_OPERATOR_LOCATION_TYPE.names[flags & 0x03],
        classification_type=_CLASSIFICATION_TYPE.names[(flags >> 2) & 0x07],
        operator_lat=lat,
        operator_lon=lon,
        area_count=area_count,
        area_radius_m=area_radius * 10,
        area_ceiling_m=_alt_m(ceiling),
        area_floor_m=_alt_m(floor),
        ua_category=_UA_CATEGORY.names[classification >> 4],
        ua_class=_UA_CLASS.names[classification & 0x0F],
        operator_alt_m=_alt_m(operator_alt),
        timestamp_unix_s=EPOCH_2019 + timestamp if timestamp else None,
        proto_version=head & 0x0F,
    )


def _decode_operator_id(msg: bytes | bytearray, off: int) -> OperatorId:
    head, operator_id_type, operator_id = _OPERATOR_ID.unpack_from(msg, off)
    return OperatorId(_OPERATOR_ID_TYPE.names[operator_id_type], _text(operator_id), head & 0x0F)


_DECODERS: tuple[Callable[[bytes | bytearray, int], SingleMessage] | None, ...] = (
    _decode_basic_id,
    _decode_location,
    _decode_auth,
    _decode_self_id,
    _decode_system,
    _decode_operator_id,
    *([None] * 10),
)


# Encoding. Values that cannot be written raise ValueError; speeds past the standard's limits
# are written as the limit (254.25 m/s, +-62 m/s), as F3411 says.


def encode(message: Message) -> bytes:
    """The wire bytes of `message`: 25 bytes, or 3 + 25 * count for a pack."""
    if isinstance(message, MessagePack):
        if len(message.messages) > PACK_MAX_MESSAGES:
            raise ValueError(f"message pack of {len(message.messages)} messages, at most 9")
        if any(isinstance(m, MessagePack) for m in message.messages):
            raise ValueError("message pack inside a message pack")
        header = _PACK_HEADER.pack(
            _head(0xF, message.proto_version), MESSAGE_SIZE, len(message.messages)
        )
        return header + b"".join(encode(m) for m in message.messages)
    if isinstance(message, BasicId):
        types = _ID_TYPE.code(message.id_type) << 4 | _UA_TYPE.code(message.ua_type)
        return _BASIC_ID.pack(
            _head(0x0, message.proto_version), types, _text_bytes("uas_id", message.uas_id, 20)
        )
    if isinstance(message, Location):
        return _encode_location(message)
    if isinstance(message, Authentication):
        if not 0 <= message.page <= 15:
            raise ValueError(f"page {message.page} outside 0..15")
        if len(message.data) > 23:
            raise ValueError(f"authentication page data is {len(message.data)} bytes, at most 23")
        return _AUTH.pack(
            _head(0x2, message.proto_version),
            _AUTH_TYPE.code(message.auth_type) << 4 | message.page,
            bytes(message.data),
        )
    if isinstance(message, SelfId):
        return _SELF_ID.pack(
            _head(0x3, message.proto_version),
            _DESCRIPTION_TYPE.code(message.description_type),
            _text_bytes("description", message.description, 23),
        )
    if isinstance(message, System):
        return _encode_system(message)
    if isinstance(message, OperatorId):
        return _OPERATOR_ID.pack(
            _head(0x5, message.proto_version),
            _OPERATOR_ID_TYPE.code(message.operator_id_type),
            _text_bytes("operator_id", message.operator_id, 20),
        )
    raise TypeError(f"not an F3411 message: {type(message).__name__}")


def _encode_location(m: Location) -> bytes:
    track, east_west = _track_code(m.track_deg)
    speed, multiplier = _speed_code(m.speed_mps)
    flags = (
        _STATUS.code(m.status) << 4
        | _HEIGHT_TYPE.code(m.height_type) << 2
        | east_west << 1
        | multiplier
    )
    lat, lon = _position_code("lat/lon", m.lat, m.lon)
    return _LOCATION.pack(
        _head(0x1, m.proto_version),
        flags,
        track,
        speed,
        _vspeed_code(m.vspeed_mps),
        lat,
        lon,
        _alt_code("pressure_alt_m", m.pressure_alt_m),
        _alt_code("geodetic_alt_m", m.geodetic_alt_m),
        _alt_code("height_m", m.height_m),
        _nibble("vert_accuracy", m.vert_accuracy) << 4
        | _nibble("horiz_accuracy", m.horiz_accuracy),
        _nibble("baro_accuracy", m.baro_accuracy) << 4
        | _nibble("speed_accuracy", m.speed_accuracy),
        _timestamp_code(m.timestamp_s_past_hour),
        _tenths_code("timestamp_accuracy_s", m.timestamp_accuracy_s, 1, 15),
    )


def _encode_system(m: System) -> bytes:
    flags = _CLASSIFICATION_TYPE.code(m.classification_type) << 2 | _OPERATOR_LOCATION_TYPE.code(
        m.operator_location_type
    )
    lat, lon = _position_code("operator_lat/lon", m.operator_lat, m.operator_lon)
    if not 0 <= m.area_count <= 0xFFFF:
        raise ValueError(f"area_count {m.area_count} outside 0..65535")
    radius = round(m.area_radius_m / 10)
    if not 0 <= radius <= 255:
        raise ValueError(f"area_radius_m {m.area_radius_m} outside 0..2550")
    timestamp = 0
    if m.timestamp_unix_s is not None:
        timestamp = m.timestamp_unix_s - EPOCH_2019
        if not 0 < timestamp <= 0xFFFF_FFFF:
            raise ValueError(f"timestamp_unix_s {m.timestamp_unix_s} not after 2019-01-01")
    return _SYSTEM.pack(
        _head(0x4, m.proto_version),
        flags,
        lat,
        lon,
        m.area_count,
        radius,
        _alt_code("area_ceiling_m", m.area_ceiling_m),
        _alt_code("area_floor_m", m.area_floor_m),
        _UA_CATEGORY.code(m.ua_category) << 4 | _UA_CLASS.code(m.ua_class),
        _alt_code("operator_alt_m", m.operator_alt_m),
        timestamp,
    )


def _head(msg_type: int, proto_version: int) -> int:
    return msg_type << 4 | _nibble("proto_version", proto_version)


def _nibble(field: str, value: int) -> int:
    if not 0 <= value <= 15:
        raise ValueError(f"{field} {value} outside 0..15")
    return value


def _finite(field: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{field} is not finite: {value}")
    return value


def _text_bytes(field: str, text: str, size: int) -> bytes:
    raw = text.encode("latin-1")
    if len(raw) > size:
        raise ValueError(f"{field} is {len(raw)} characters, at most {size}")
    return raw.ljust(size, b"\x00")


def _track_code(track_deg: float | None) -> tuple[int, int]:
    if track_deg is None:
        return 181, 1
    if not 0.0 <= _finite("track_deg", track_deg) < 360.0:
        raise ValueError(f"track_deg {track_deg} outside [0, 360)")
    degrees = round(track_deg) % 360
    return (degrees, 0) if degrees < 180 else (degrees - 180, 1)


def _speed_code(speed_mps: float | None) -> tuple[int, int]:
    if speed_mps is None:
        return 255, 1
    if _finite("speed_mps", speed_mps) < 0.0:
        raise ValueError(f"speed_mps {speed_mps} is negative")
    if speed_mps <= 63.75:
        return round(speed_mps / 0.25), 0
    return min(round((speed_mps - 63.75) / 0.75), 254), 1


def _vspeed_code(vspeed_mps: float | None) -> int:
    if vspeed_mps is None:
        return 126
    return round(min(max(_finite("vspeed_mps", vspeed_mps), -62.0), 62.0) * 2)


def _position_code(field: str, lat: float | None, lon: float | None) -> tuple[int, int]:
    if lat is None and lon is None:
        return 0, 0
    if lat is None or lon is None:
        raise ValueError(f"{field}: one of the pair is unknown")
    if not (-90.0 <= _finite(field, lat) <= 90.0 and -180.0 <= _finite(field, lon) <= 180.0):
        raise ValueError(f"{field} ({lat}, {lon}) out of range")
    return round(lat * 1e7), round(lon * 1e7)


def _alt_code(field: str, alt_m: float | None) -> int:
    if alt_m is None:
        return 0
    code = round((_finite(field, alt_m) + 1000.0) * 2)
    if not 1 <= code <= 0xFFFF:
        raise ValueError(f"{field} {alt_m} outside -999.5..31767.5 m")
    return code


def _timestamp_code(s_past_hour: float | None) -> int:
    if s_past_hour is None:
        return 0xFFFF
    return _tenths_code("timestamp_s_past_hour", s_past_hour, 0, 36000)


def _tenths_code(field: str, seconds: float | None, low: int, high: int) -> int:
    if seconds is None:
        return 0
    code = round(_finite(field, seconds) * 10)
    if not low <= code <= high:
        raise ValueError(f"{field} {seconds} outside {low / 10}..{high / 10} s")
    return code


# Time


def place_in_hour(s_past_hour: float, receive_t: float) -> float:
    """Unix time of the instant `s_past_hour` seconds past a UTC hour that is nearest to
    `receive_t`; a tie (30 min either way) goes to the earlier, as a message precedes its
    reception."""
    t = receive_t - receive_t % 3600.0 + s_past_hour
    if t - receive_t >= 1800.0:
        return t - 3600.0
    if t - receive_t < -1800.0:
        return t + 3600.0
    return t


# Observations


_STATUS_OBSERVED = {
    "ground": "ground",
    "airborne": "airborne",
    "emergency": "emergency",
    "remote_id_system_failure": "airborne",  # the aircraft still flies; its Remote ID is degraded
}
# Which UAS ID names a UA that broadcasts several: the lowest rank wins.
_ID_RANK = {"serial_number": 0, "caa_registration": 1, "utm_uuid": 2, "specific_session": 3}
_OTHER_ID_RANK = len(_ID_RANK)
_K = TypeVar("_K")
_V = TypeVar("_V")


class _Rejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OdidAssembler:
    """Joins one gateway connection's F3411 items into observations (API.md sections 1 and 6).

    A Basic ID names the UA of its broadcaster (`src`, e.g. a BLE MAC address); a Location from
    the same `src`, in this or a later feed, is joined to it. An item without `src` joins only
    within its own message pack: guessing would put one drone's position on another.
    System messages give the operator's position, kept in `operator_positions` (uav -> lat, lon).
    """

    def __init__(self, max_sources: int = 10_000) -> None:
        self.operator_positions: dict[str, tuple[float, float]] = {}
        self._max_sources = max_sources
        self._uav_by_src: dict[str, tuple[int, str]] = {}  # src -> (rank of its id type, uav)
        self._operator_by_src: dict[str, tuple[float, float]] = {}

    def feed(self, items: list[object]) -> tuple[list[dict[str, object]], list[tuple[int, str]]]:
        """Observations from `items` ({"t": receive Unix s, "msg": bytes, "src"?: str}), and
        (index, reason) for each item that gives none because it is malformed or unjoinable."""
        observations: list[dict[str, object]] = []
        errors: list[tuple[int, str]] = []
        for index, item in enumerate(items):
            try:
                observations.extend(self._observations_of(item))
            except _Rejected as exc:
                errors.append((index, exc.reason))
            except DecodeError as exc:
                errors.append((index, str(exc)))
        return observations, errors

    def _observations_of(self, item: object) -> list[dict[str, object]]:
        if not isinstance(item, dict):
            raise _Rejected("item must be a map with t and msg")
        receive_t, msg, src = item.get("t"), item.get("msg"), item.get("src")
        if isinstance(receive_t, bool) or not isinstance(receive_t, int | float):
            raise _Rejected("t must be a number (receive time, Unix s)")
        try:
            receive_t = float(receive_t)
        except OverflowError:
            raise _Rejected("t is out of range") from None
        if not math.isfinite(receive_t):
            raise _Rejected("t must be finite")
        if not isinstance(msg, bytes | bytearray):
            raise _Rejected("msg must be bytes")
        if src is not None and not isinstance(src, str):
            raise _Rejected("src must be a string")
        decoded = decode(msg)
        messages = decoded.messages if isinstance(decoded, MessagePack) else (decoded,)
        uav = self._uav_of(messages, src)
        observations: list[dict[str, object]] = []
        for m in messages:
            if isinstance(m, Location):
                if uav is None:
                    raise _Rejected(f"location without basic id for src {_src_text(src)}")
                observations.append(_observation(m, uav, receive_t))
            elif isinstance(m, System):
                self._keep_operator(m, uav, src)
            elif isinstance(m, BasicId) and uav is None:
                raise _Rejected("basic id without a uas id")
        return observations

    def _uav_of(self, messages: tuple[SingleMessage, ...], src: str | None) -> str | None:
        """The UA these messages are about: the best-ranked Basic ID among them, else the one
        remembered for `src`. A src keeps its best-ranked id, so one UA broadcasting both a
        serial number and a registration stays one uav."""
        best: tuple[int, str] | None = None
        for m in messages:
            if isinstance(m, BasicId):
                uas_id = m.uas_id.strip()
                if uas_id:
                    candidate = (_ID_RANK.get(m.id_type, _OTHER_ID_RANK), uas_id)
                    if best is None or candidate[0] < best[0]:
                        best = candidate
        if src is None:
            return best[1] if best is not None else None
        known = self._uav_by_src.get(src)
        if best is not None and (known is None or best[0] <= known[0]):
            known = best
            _remember(self._uav_by_src, src, best, self._max_sources)
            operator = self._operator_by_src.get(src)
            if operator is not None:
                _remember(self.operator_positions, best[1], operator, self._max_sources)
        return known[1] if known is not None else None

    def _keep_operator(self, m: System, uav: str | None, src: str | None) -> None:
        if m.operator_lat is None or m.operator_lon is None:
            return
        position = (m.operator_lat, m.operator_lon)
        if src is not None:
            _remember(self._operator_by_src, src, position, self._max_sources)
        elif uav is None:
            raise _Rejected("system message without basic id for src (none)")
        if uav is not None:
            _remember(self.operator_positions, uav, position, self._max_sources)


def _src_text(src: str | None) -> str:
    return repr(src) if src is not None else "(none: send src, or a message pack)"


def _remember(table: dict[_K, _V], key: _K, value: _V, limit: int) -> None:
    """Set table[key] as the newest entry, forgetting the oldest past `limit`."""
    table.pop(key, None)
    table[key] = value
    if len(table) > limit:
        del table[next(iter(table))]


def _observation(m: Location, uav: str, receive_t: float) -> dict[str, object]:
    if m.lat is None or m.lon is None:
        raise _Rejected("location without position (lat/lon unknown)")
    if m.geodetic_alt_m is not None:
        alt_m, acc_v_m = m.geodetic_alt_m, m.vert_accuracy_m
    elif m.pressure_alt_m is not None:
        alt_m, acc_v_m = m.pressure_alt_m, m.baro_accuracy_m
    else:
        raise _Rejected("location without altitude (geodetic and pressure unknown)")
    s_past_hour = m.timestamp_s_past_hour
    obs: dict[str, object] = {
        "uav": uav,
        "t": place_in_hour(s_past_hour, receive_t) if s_past_hour is not None else receive_t,
        "lat": m.lat,
        "lon": m.lon,
        "alt_m": alt_m,
    }
    if m.height_type == "agl" and m.height_m is not None:
        obs["agl_m"] = m.height_m
    if m.speed_mps is not None:
        obs["speed_mps"] = m.speed_mps
    if m.track_deg is not None:
        obs["track_deg"] = m.track_deg
    if m.vspeed_mps is not None:
        obs["vspeed_mps"] = m.vspeed_mps
    status = _STATUS_OBSERVED.get(m.status)
    if status is not None:
        obs["status"] = status
    acc_h_m = m.horiz_accuracy_m
    if acc_h_m is not None:
        obs["acc_h_m"] = acc_h_m
    if acc_v_m is not None:
        obs["acc_v_m"] = acc_v_m
    obs["format"] = FMT
    return obs
