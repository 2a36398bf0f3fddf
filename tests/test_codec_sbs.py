"""SBS-1 BaseStation codec: the golden sample, merging, units, bad lines, and fuzzed text."""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.codecs.sbs import SbsTracker
from tests.conftest import GOLDEN

SAMPLE = (GOLDEN / "sbs_sample.txt").read_text()
RECEIVE_T = 1_795_500_010.0  # 2026-11-24T06:00:10Z, just after the sample
FUZZ = settings(database=None, deadline=None, max_examples=400)


def _utc(hms: str) -> float:
    h, m, s = hms.split(":")
    return calendar.timegm((2026, 11, 24, int(h), int(m), 0)) + float(s)


def _line(kind: int, icao: str = "780A27", *, alt: str = "", speed: str = "", track: str = "",
          lat: str = "", lon: str = "", vrate: str = "", squawk: str = "", callsign: str = "",
          emergency: str = "0", ground: str = "0", time: str = "06:00:05.000") -> str:  # fmt: skip
    return (
        f"MSG,{kind},1,1,{icao},1,2026/11/24,{time},2026/11/24,{time},{callsign},{alt},"
        f"{speed},{track},{lat},{lon},{vrate},{squawk},0,{emergency},0,{ground}"
    )


def _by_uav(observations: list[dict[str, object]], uav: str) -> list[dict[str, object]]:
    return [o for o in observations if o["uav"] == uav]


# The golden sample


def test_sample_decodes_without_errors_into_four_positions() -> None:
    observations, errors = SbsTracker().feed(SAMPLE, RECEIVE_T)
    assert errors == []
    assert [(o["uav"], o["t"]) for o in observations] == [
        ("ICAO-780A27", _utc("06:00:00.500")),
        ("ICAO-780A27", _utc("06:00:01.500")),
        ("ICAO-7812C5", _utc("06:00:02.200")),
        ("ICAO-7812C5", _utc("06:00:03.200")),
    ]
    for obs in observations:
        assert obs["kind"] == "crewed" and obs["format"] == "sbs" and obs["status"] == "airborne"
        assert obs["icao"] == str(obs["uav"]).removeprefix("ICAO-")


def test_sample_780a27_as_stated() -> None:
    tracker = SbsTracker()
    observations, _ = tracker.feed(SAMPLE, RECEIVE_T)
    first, last = _by_uav(observations, "ICAO-780A27")
    assert first["alt_m"] == pytest.approx(3025 * 0.3048)
    assert "speed_mps" not in first  # the velocity message comes after the first position
    assert last["lat"] == pytest.approx(29.80020) and last["lon"] == pytest.approx(106.60300)
    assert last["alt_m"] == pytest.approx(914.4)
    assert last["speed_mps"] == pytest.approx(93.63, abs=0.005)
    assert last["track_deg"] == pytest.approx(152.3)
    assert last["vspeed_mps"] == pytest.approx(-3.576, abs=0.0005)
    assert last["callsign"] == "CCA4371"
    state = tracker.aircraft["780A27"]
    assert state.callsign == "CCA4371"
    assert state.lat == pytest.approx(29.80020) and state.lon == pytest.approx(106.60300)
    assert state.alt_m == pytest.approx(914.4)
    assert state.speed_mps == pytest.approx(93.63, abs=0.005)
    assert state.track_deg == pytest.approx(152.3)
    assert state.vspeed_mps == pytest.approx(-3.576, abs=0.0005)
    assert state.squawk == "4512"
    assert state.on_ground is False


def test_sample_7812c5_as_stated() -> None:
    tracker = SbsTracker()
    observations, _ = tracker.feed(SAMPLE, RECEIVE_T)
    first, last = _by_uav(observations, "ICAO-7812C5")
    assert first["alt_m"] == pytest.approx(1200 * 0.3048)
    assert last["lat"] == pytest.approx(29.72700) and last["lon"] == pytest.approx(106.63110)
    assert last["alt_m"] == pytest.approx(388.62)
    assert last["speed_mps"] == pytest.approx(95 * 1852 / 3600)
    assert last["track_deg"] == pytest.approx(47.0)
    assert last["vspeed_mps"] == pytest.approx(640 * 0.3048 / 60)
    assert last["status"] == "airborne"
    assert "callsign" not in last and "squawk" not in last
    # The last MSG,3 has no position and says on ground: status changes, position does not.
    state = tracker.aircraft["7812C5"]
    assert state.on_ground is True and state.status == "ground"
    assert state.lat == pytest.approx(29.72700) and state.lon == pytest.approx(106.63110)
    assert state.alt_m == pytest.approx(388.62)


def test_sample_with_crlf_and_fed_line_by_line_gives_the_same() -> None:
    expected = SbsTracker().feed(SAMPLE, RECEIVE_T)
    assert SbsTracker().feed(SAMPLE.replace("\n", "\r\n"), RECEIVE_T) == expected
    tracker = SbsTracker()
    observations: list[dict[str, object]] = []
    for line in SAMPLE.splitlines():
        got, errors = tracker.feed(line + "\r\n", RECEIVE_T)
        assert errors == []
        observations += got
    assert observations == expected[0]


# Units and merging


def test_unit_conversions() -> None:
    tracker = SbsTracker()
    text = "\n".join(
        [
            _line(4, speed="100", track="90.5", vrate="-1000"),
            _line(3, alt="1000", lat="29.5", lon="106.5"),
        ]
    )
    observations, errors = tracker.feed(text, RECEIVE_T)
    assert errors == []
    assert observations[0]["alt_m"] == pytest.approx(304.8)
    assert observations[0]["speed_mps"] == pytest.approx(51.44444, abs=1e-5)
    assert observations[0]["vspeed_mps"] == pytest.approx(-5.08)
    assert observations[0]["track_deg"] == 90.5


def test_position_observation_carries_callsign_and_squawk_when_known() -> None:
    text = "\n".join(
        [
            _line(1, callsign="CSN3301 "),
            _line(6, alt="2000", squawk="0123"),
            _line(3, alt="2100", lat="29.6", lon="106.6"),
        ]
    )
    observations, _ = SbsTracker().feed(text, RECEIVE_T)
    assert observations == [
        {
            "uav": "ICAO-780A27",
            "t": _utc("06:00:05"),
            "lat": 29.6,
            "lon": 106.6,
            "alt_m": pytest.approx(2100 * 0.3048),
            "status": "airborne",
            "kind": "crewed",
            "format": "sbs",
            "icao": "780A27",
            "callsign": "CSN3301",
            "squawk": "0123",
        }
    ]


def test_lower_case_hex_ident_is_normalised() -> None:
    observations, _ = SbsTracker().feed(_line(3, "780a27", alt="1", lat="1", lon="1"), RECEIVE_T)
    assert observations[0]["uav"] == "ICAO-780A27" and observations[0]["icao"] == "780A27"


@pytest.mark.parametrize(
    ("lines", "status"),
    [
        ([_line(3, alt="0", lat="29.7", lon="106.6", ground="-1")], "ground"),
        ([_line(2, alt="0", lat="29.7", lon="106.6", ground="")], "ground"),  # surface position
        ([_line(6, squawk="7700"), _line(3, alt="900", lat="29.7", lon="106.6")], "emergency"),
        ([_line(6, squawk="7600"), _line(3, alt="900", lat="29.7", lon="106.6")], "lost_link"),
        (
            [_line(6, emergency="-1"), _line(3, alt="9", lat="2", lon="1", emergency="")],
            "emergency",
        ),
        ([_line(6, emergency="1"), _line(3, alt="9", lat="2", lon="1", emergency="0")], "airborne"),
    ],
)
def test_status(lines: list[str], status: str) -> None:
    observations, errors = SbsTracker().feed("\n".join(lines), RECEIVE_T)
    assert errors == [] and observations[-1]["status"] == status


def test_missing_or_bad_generated_time_falls_back_to_receive_time() -> None:
    line = _line(3, alt="900", lat="29.7", lon="106.6")
    no_time = line.replace("2026/11/24,06:00:05.000,2026", ",,2026", 1)
    bad_time = line.replace("06:00:05.000", "25:61:05.000", 1)
    bad_date = line.replace("2026/11/24", "2026/13/24", 1)
    for text in (no_time, bad_time, bad_date):
        observations, errors = SbsTracker().feed(text, RECEIVE_T)
        assert errors == [] and observations[0]["t"] == RECEIVE_T, text


def test_state_of_a_silent_aircraft_is_not_merged_and_is_forgotten() -> None:
    tracker = SbsTracker(expire_s=300.0)
    tracker.feed(_line(4, speed="100"), RECEIVE_T)
    observations, _ = tracker.feed(_line(3, alt="900", lat="2", lon="1"), RECEIVE_T + 300.5)
    assert "speed_mps" not in observations[0]  # the velocity is 300.5 s old
    tracker.feed(_line(4, "7812C5", speed="100"), RECEIVE_T + 400.0)
    tracker.feed(_line(4, "7812C5", speed="100"), RECEIVE_T + 700.0)
    assert list(tracker.aircraft) == ["7812C5"]  # dropped within a minute past expire_s


# Bad lines


GOOD = _line(3, alt="1000", lat="29.5", lon="106.5")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("MSG,3,1,1,780A27", "expected 22 fields, got 5"),
        (GOOD + ",0", "expected 22 fields, got 23"),
        ("HELLO,1,2", "unknown record type"),
        (GOOD.replace("MSG,3", "MSG,9", 1), "transmission type '9'"),
        (GOOD.replace("780A27", "780A2", 1), "hex ident '780A2'"),
        (GOOD.replace("780A27", "78OA27", 1), "hex ident"),
        (GOOD.replace("29.5", "29.5x", 1), "field 15: latitude '29.5x' is not a number"),
        (GOOD.replace("29.5", "nan", 1), "not finite"),
        (GOOD.replace("29.5", "91.0", 1), "out of range"),
        (GOOD.replace("106.5", "", 1), "latitude and longitude must come together"),
        (GOOD.replace(",1000,", ",1e999,", 1), "not finite"),
        (_line(4, speed="-3"), "negative"),
        (_line(4, track="361"), "track"),
        (_line(6, squawk="7800"), "squawk"),
        (_line(3, ground="2"), "is on ground flag '2'"),
        (_line(3, "7812C5", lat="29.5", lon="106.5"), "position without a known altitude"),
    ],
)
def test_bad_line_is_an_error_and_the_rest_still_decodes(line: str, reason: str) -> None:
    tracker = SbsTracker()
    observations, errors = tracker.feed("\n".join([GOOD, line, GOOD]), RECEIVE_T)
    assert len(observations) == 2
    assert len(errors) == 1 and errors[0][0] == 2
    assert reason in errors[0][1]


def test_bad_line_changes_no_state() -> None:
    tracker = SbsTracker()
    tracker.feed(_line(4, speed="100", track="10"), RECEIVE_T)
    tracker.feed(_line(4, speed="200", track="400"), RECEIVE_T)
    assert tracker.aircraft["780A27"].track_deg == 10.0
    assert tracker.aircraft["780A27"].speed_mps == pytest.approx(100 * 1852 / 3600)


def test_blank_and_other_record_lines_are_not_errors() -> None:
    text = "\r\n\nSTA,,5,179,400AE7,10103,2008/11/28,14:58:51.153,2008/11/28,14:58:51.153,RM\n  \n"
    assert SbsTracker().feed(text, RECEIVE_T) == ([], [])


def test_line_numbers_count_every_line() -> None:
    _, errors = SbsTracker().feed("\n\nbad\r\n" + GOOD + "\nworse", RECEIVE_T)
    assert [number for number, _ in errors] == [3, 5]


# Fuzzing

CHARS = st.one_of(
    st.sampled_from(list("MSG,0123456789.-:/ \r\nABCDEFabcdef+eEnaif")),
    st.integers(0, 0x10FFFF).map(chr),
)
TEXT = st.lists(CHARS, max_size=400).map("".join)
FIELD = st.one_of(
    st.just(""),
    st.sampled_from(["0", "1", "-1", "3000", "29.8", "-704", "4512", "7700", "nan", "1e999"]),
    st.sampled_from(["2026/11/24", "06:00:01.5", "780A27", "9999/99/99", "99:99:99", "CCA4371 "]),
    st.lists(CHARS, max_size=8).map("".join),
)
MSG_LINE = st.tuples(
    st.sampled_from(["1", "2", "3", "4", "5", "6", "7", "8", "0", "x"]),
    st.lists(FIELD, min_size=18, max_size=22),
).map(lambda p: ",".join(["MSG", p[0], "1", "1", "780A27", *p[1]]))


@FUZZ
@given(TEXT, st.floats(allow_nan=False))
def test_arbitrary_text_never_raises(text: str, receive_t: float) -> None:
    observations, errors = SbsTracker().feed(text, receive_t)
    assert all(isinstance(n, int) and isinstance(r, str) for n, r in errors)
    assert len(observations) + len(errors) <= text.count("\n") + 1


@FUZZ
@given(st.lists(MSG_LINE, max_size=12))
def test_arbitrary_msg_lines_never_raise(lines: list[str]) -> None:
    tracker = SbsTracker()
    text = "\r\n".join(lines)
    observations, errors = tracker.feed(text, RECEIVE_T)
    assert len(observations) + len(errors) <= text.count("\n") + 1
    for obs in observations:
        assert -90.0 <= obs["lat"] <= 90.0 and -180.0 <= obs["lon"] <= 180.0  # type: ignore[operator]
        assert obs["kind"] == "crewed" and obs["alt_m"] is not None


# The inline conversions agree with the field-by-field ones, on any field text

_NUMBER_TEXTS = st.sampled_from(
    ["", "0", "-0", "12.5", "-300", "1e3", "1e999", "-1e999", "nan", "inf", "-Infinity",
     " 7", "1_000", "x", "29.5", "106.4", "400", "-91", "180.0", "1e308", "0x10"]
)
_FLAG_FIELD_TEXTS = st.sampled_from(["", "0", "1", "-1", " 1", "1 ", "2", "yes"])
_TIME_TEXTS = st.sampled_from(["06:00:05.000", "23:59:59.999", "24:00:00", "06:60:00", "6:00:05",
                               "06:00:5", "06-00-05", "06:00:61", "06:00:60.5", "0６:00:05",
                               "06:00:05e0", "06:00:", "12:34:56"])


def _reference(fields: list[str]) -> tuple[dict[str, object] | None, str | None]:
    """What the field-by-field helpers make of a MSG,3 line's numbers, flags and time."""
    from ingest.codecs.sbs import (  # the helpers the inline path falls back to
        FT_M,
        _BadLine,
        _flag,
        _number,
    )

    try:
        alt, _, _, lat, lon, _ = (_number(fields, i, name) for i, name in (
            (11, "altitude"), (12, "ground speed"), (13, "track"), (14, "latitude"),
            (15, "longitude"), (16, "vertical rate")))
        emergency = _flag(fields, 19, "emergency")
        on_ground = _flag(fields, 21, "is on ground")
    except _BadLine as exc:
        return None, exc.reason
    if lat is None and lon is None:
        return None, None
    if lat is None or lon is None:
        return None, "fields 15-16: latitude and longitude must come together"
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None, f"fields 15-16: position ({lat}, {lon}) out of range"
    if alt is None:
        return None, "position without a known altitude: no observation"
    seconds = _seconds_reference(fields[7])
    status = "emergency" if emergency else "ground" if on_ground else "airborne"
    return {"alt_m": alt * FT_M, "lat": lat, "lon": lon, "status": status,
            "t": None if seconds is None else seconds}, None


def _seconds_reference(time: str) -> float | None:
    """Seconds of day of HH:MM:SS[.fff], field by field."""
    if len(time) < 8 or time[2] != ":" or time[5] != ":":
        return None
    hours, minutes, seconds = time[:2], time[3:5], time[6:]
    if not (hours.isascii() and hours.isdigit() and minutes.isascii() and minutes.isdigit()):
        return None
    if not (seconds[:2].isascii() and seconds[:2].isdigit()):
        return None
    try:
        s = float(seconds)
    except ValueError:
        return None
    h, m = int(hours), int(minutes)
    if h > 23 or m > 59 or not 0.0 <= s < 61.0:
        return None
    return h * 3600 + m * 60 + s


@FUZZ
@given(alt=_NUMBER_TEXTS, lat=_NUMBER_TEXTS, lon=_NUMBER_TEXTS, emergency=_FLAG_FIELD_TEXTS,
       ground=_FLAG_FIELD_TEXTS, time=_TIME_TEXTS)
def test_inline_conversions_match_the_field_checks(alt: str, lat: str, lon: str, emergency: str,
                                                   ground: str, time: str) -> None:
    line = _line(3, alt=alt, lat=lat, lon=lon, emergency=emergency, ground=ground, time=time)
    expected, reason = _reference(line.split(","))
    observations, errors = SbsTracker().feed(line, RECEIVE_T)
    if reason is not None:
        assert (observations, errors) == ([], [(1, reason)])
        return
    assert errors == []
    if expected is None:
        assert observations == []
        return
    (obs,) = observations
    midnight = calendar.timegm((2026, 11, 24, 0, 0, 0))
    t = RECEIVE_T if expected["t"] is None else midnight + expected["t"]  # type: ignore[operator]
    assert {k: obs[k] for k in ("alt_m", "lat", "lon", "status")} == {
        k: expected[k] for k in ("alt_m", "lat", "lon", "status")}
    assert obs["t"] == t


# The fast path of feed agrees with the careful one (`_apply` on each stripped line)


def _feed_carefully(
    tracker: SbsTracker, text: str, receive_t: float
) -> tuple[list[dict[str, object]], list[tuple[int, str]]]:
    from ingest.codecs.sbs import _BadLine

    tracker._expire(receive_t)
    observations: list[dict[str, object]] = []
    errors: list[tuple[int, str]] = []
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                observation = tracker._apply(line.strip(), receive_t)
            except _BadLine as exc:
                errors.append((number, exc.reason))
            else:
                if observation is not None:
                    observations.append(observation)
    return observations, errors


_COORDINATE = st.floats(-200.0, 200.0).map(lambda x: f"{x:.5f}")
_USUAL_FIELDS = st.fixed_dictionaries({  # index -> text of a MSG line as decoders send it
    1: st.sampled_from(["3", "3", "3", "4", "4", "2", "1", "5", "6", "7", "8"]),
    4: st.sampled_from(["780A27", "7812C5", "780a27"]),
    7: st.one_of(st.tuples(st.integers(0, 23), st.integers(0, 59), st.floats(0.0, 60.999)).map(
        lambda hms: f"{hms[0]:02d}:{hms[1]:02d}:{hms[2]:06.3f}"), _TIME_TEXTS, st.sampled_from(
        ["06:00:7.5", "06:00:05x", "06:00:05 ", "06:00:05_1", "06:00:99", "06:00:59.9999"])),
    10: st.sampled_from(["", "", "CCA4371 ", "  "]),
    11: st.one_of(st.just(""), *[st.integers(-1000, 45_000).map(lambda n: str(n // 25 * 25))] * 2),
    12: st.one_of(st.just(""), st.integers(0, 600).map(str), st.just("-0")),
    13: st.one_of(st.just(""), st.integers(0, 3600).map(lambda n: f"{n / 10:.1f}"),
                  st.sampled_from(["360", "0", "-0.0", "47"])),
    16: st.one_of(st.just(""), st.integers(-64, 64).map(lambda n: str(n * 64))),
    17: st.sampled_from(["", "", "", "4512", "7700", "7600", "12"]),
    19: st.sampled_from(["0", "", "-1", "1"]),
    21: st.sampled_from(["0", "", "-1", "1"]),
})
_POSITION = st.one_of(  # fields 15 and 16
    st.just(("", "")),
    st.tuples(st.floats(-90.0, 90.0), st.floats(-180.0, 180.0)).map(
        lambda p: (f"{p[0]:.5f}", f"{p[1]:.5f}")),
    st.tuples(st.floats(-90.0, 90.0), st.floats(-180.0, 180.0)).map(
        lambda p: (str(p[0]), str(p[1]))),
    st.tuples(_COORDINATE, _COORDINATE),
)
_ODD_FIELDS = st.one_of(_NUMBER_TEXTS, _FLAG_FIELD_TEXTS, _TIME_TEXTS, st.sampled_from(
    ["", "2026-11-24", "2026/13/24", "2024/02/29", "780A2", "78OA27", " 780A27", "9", "x",
     " 123", "7800", "12345", "06:00:05 ", "06:00:05x", "06:00:05_1", "06:00:99", "06:00:7.5"]))


def _usual_line(usual: dict[int, str], position: tuple[str, str], odd: tuple[int, str] | None,
                end: str) -> str:
    fields = ["MSG", "", "1", "1", "", "1", "2026/11/24", "", "2026/11/24", "", *[""] * 9, "0",
              "0", "0"]
    for index, text in usual.items():
        fields[index] = text
    fields[9] = fields[7]
    fields[14], fields[15] = position
    if odd is not None:
        fields[odd[0]] = odd[1]
    return ",".join(fields) + end


_USUAL_OR_ODD_LINE = st.builds(
    _usual_line, _USUAL_FIELDS, _POSITION,
    st.one_of(*[st.none()] * 3, st.tuples(st.integers(1, 21), _ODD_FIELDS)),
    st.sampled_from(["", "", "\r", " ", " \r", "\t", "\x85"]),
)
_ANY_LINE = st.one_of(*[_USUAL_OR_ODD_LINE] * 8,
                      st.sampled_from(["", " ", "\r", "STA,,5", " MSG,3", "msg,3"]))


@FUZZ
@given(st.lists(_ANY_LINE, max_size=12), st.sampled_from(["\n", "\r\n"]))
def test_fast_path_decodes_as_the_careful_one(lines: list[str], newline: str) -> None:
    text = newline.join(lines)
    fast, careful = SbsTracker(), SbsTracker()
    for receive_t in (RECEIVE_T, RECEIVE_T, RECEIVE_T + 400.0):
        got, expected = fast.feed(text, receive_t), _feed_carefully(careful, text, receive_t)
        assert got == expected
        assert [list(o.items()) for o in got[0]] == [list(o.items()) for o in expected[0]]
        assert [repr(o) for o in got[0]] == [repr(o) for o in expected[0]]  # -0.0 and 0.0 too
        assert repr(fast.aircraft) == repr(careful.aircraft)


# The fast path keeps the values of the numeric texts it has seen (sbs._KNOWN_TEXTS per field)


def test_known_texts_at_their_limit_and_past_it_decode_as_the_careful_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ingest.codecs import sbs

    limit = 4
    known = {name: {"": None} for name in ("_ALTITUDES_M", "_SPEEDS_MPS", "_TRACKS_DEG",
                                            "_VSPEEDS_MPS")}
    for name, texts in known.items():
        monkeypatch.setattr(sbs, name, texts)
    monkeypatch.setattr(sbs, "_KNOWN_TEXTS", limit)
    lines = [line for n in range(limit + 2) for line in (  # limit - 1 texts, the limit, past it
        _line(4, speed=str(100 + n), track=f"{n}.5", vrate=str(-64 * n)),
        _line(3, alt=str(1000 + 25 * n), lat="29.5", lon="106.5"),
        _line(3, alt="nan", lat="29.5", lon="106.5"),  # refused: never kept
    )]
    text = "\n".join(lines * 2)  # seen first, then looked up
    fast, careful = SbsTracker(), SbsTracker()
    got, expected = fast.feed(text, RECEIVE_T), _feed_carefully(careful, text, RECEIVE_T)
    assert got == expected and len(got[0]) == 2 * (limit + 2)
    assert [repr(o) for o in got[0]] == [repr(o) for o in expected[0]]
    assert repr(fast.aircraft) == repr(careful.aircraft)
    for texts in known.values():
        assert 1 <= len(texts) <= limit and texts[""] is None
        assert "nan" not in texts
