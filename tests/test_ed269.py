"""ED-269: the shared sample imports with the values its .md states, exports give imported
features back verbatim and synthesised ones import to equal zones, and an invalid document is
refused whole, naming the feature and the field."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Point, Polygon

from geofence.ed269 import zones_from_ed269, zones_to_ed269
from geofence.zones import Zone
from lowalt.errors import ValidationError
from tests.conftest import GOLDEN
from tests.test_zones import zones

SAMPLE_PATH = GOLDEN / "ed269_sample.json"
SAMPLE: dict[str, Any] = json.loads(SAMPLE_PATH.read_text())


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def sample() -> dict[str, Any]:
    return copy.deepcopy(SAMPLE)


def volume(**overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "uomDimensions": "M",
        "lowerLimit": 0,
        "lowerVerticalReference": "AGL",
        "upperLimit": 120,
        "upperVerticalReference": "AGL",
        "horizontalProjection": {"type": "Circle", "center": [106.6, 29.7], "radius": 300},
    }
    item.update(overrides)
    return item


def version(identifier: str = "TEST-1", **overrides: Any) -> dict[str, Any]:
    feature: dict[str, Any] = {
        "identifier": identifier,
        "country": "CHN",
        "name": "test",
        "type": "COMMON",
        "restriction": "PROHIBITED",
        "zoneAuthority": [],
        "applicability": [{"permanent": "YES"}],
        "geometry": [volume()],
    }
    feature.update(overrides)
    return feature


def test_sample_imports_with_the_stated_values() -> None:
    ctr, log = zones_from_ed269(sample())
    assert ctr.id == "ZUCK-CTR" and ctr.name == "Jiangbei airport control zone"
    assert ctr.restriction == "prohibited"
    assert ctr.geometry.equals(Point(106.6417, 29.7192)) and ctr.radius_m == 5000.0
    assert (ctr.lower_m, ctr.reference) == (0.0, "agl")
    assert (ctr.upper_m, ctr.upper_ref) == (600.0, "amsl")
    assert (ctr.start, ctr.end, ctr.schedule) == (None, None, None)
    assert ctr.active_at(0.0) and ctr.active_at(4e9)

    assert log.id == "MYH-LOG" and log.restriction == "authorization_required"
    ring = [(106.75, 29.69), (106.79, 29.69), (106.79, 29.715), (106.75, 29.715), (106.75, 29.69)]
    assert log.geometry.equals(Polygon(ring)) and log.radius_m is None
    assert log.lower_m == 0.0 and log.upper_m == pytest.approx(121.92, abs=1e-9)
    assert (log.reference, log.upper_ref) == ("agl", "agl")
    start, end = ts("2026-01-01T00:00:00"), ts("2027-12-31T23:59:59")
    assert (log.start, log.end) == (start, end)
    assert not log.active_at(start - 1)
    assert log.active_at(start) and log.active_at(end)
    assert not log.active_at(end + 1)
    assert ctr.source_doc == SAMPLE["features"][0] and log.source_doc == SAMPLE["features"][1]


def test_import_does_not_keep_a_reference_to_the_caller_document() -> None:
    doc = sample()
    ctr, _ = zones_from_ed269(doc)
    doc["features"][0]["name"] = "changed"
    assert ctr.source_doc is not None and ctr.source_doc["name"] == "Jiangbei airport control zone"


def test_sample_export_is_verbatim_and_reimports_equal() -> None:
    imported = zones_from_ed269(sample())
    exported = zones_to_ed269(imported)
    assert exported["features"] == SAMPLE["features"]
    again = zones_from_ed269(json.loads(json.dumps(exported)))
    assert again == imported


def test_bare_list_of_versions() -> None:
    assert [z.id for z in zones_from_ed269(sample()["features"])] == ["ZUCK-CTR", "MYH-LOG"]


def test_feet_and_wgs84() -> None:
    (zone,) = zones_from_ed269(
        [
            version(
                geometry=[
                    volume(
                        uomDimensions="FT",
                        lowerLimit=100,
                        lowerVerticalReference="WGS84",
                        upperLimit=1000,
                        upperVerticalReference="WGS84",
                        horizontalProjection={
                            "type": "Circle",
                            "center": [106.6, 29.7],
                            "radius": 1000,
                        },
                    )
                ]
            )
        ]
    )
    assert zone.lower_m == pytest.approx(30.48) and zone.upper_m == pytest.approx(304.8)
    assert zone.radius_m == pytest.approx(304.8)
    assert (zone.reference, zone.upper_reference) == ("wgs84", None)


def test_missing_limits_are_unlimited() -> None:
    item = volume()
    del item["upperLimit"], item["upperVerticalReference"]
    (zone,) = zones_from_ed269([version(geometry=[item])])
    assert (zone.lower_m, zone.upper_m, zone.reference, zone.upper_reference) == (
        0.0,
        None,
        "agl",
        None,
    )


def test_several_volumes_become_several_zones() -> None:
    square = [[[106.5, 29.5], [106.6, 29.5], [106.6, 29.6], [106.5, 29.6], [106.5, 29.5]]]
    doc = [
        version(
            geometry=[
                volume(),
                volume(
                    lowerLimit=120,
                    upperLimit=300,
                    horizontalProjection={"type": "Polygon", "coordinates": square},
                ),
                volume(lowerLimit=300, upperLimit=None),
            ]
        )
    ]
    first, second, third = zones_from_ed269(doc)
    assert [first.id, second.id, third.id] == ["TEST-1", "TEST-1#2", "TEST-1#3"]
    assert (second.lower_m, second.upper_m) == (120.0, 300.0)
    assert isinstance(second.geometry, Polygon) and third.upper_m is None
    assert zones_to_ed269([first, second, third])["features"] == doc

    # one deleted: the survivors come back under their own ids, still faithful
    survivors = zones_to_ed269([first, third])
    assert [f["identifier"] for f in survivors["features"]] == ["TEST-1", "TEST-1#3"]
    assert zones_from_ed269(survivors) == [first, third]


def test_changed_zone_is_written_afresh() -> None:
    ctr, log = zones_from_ed269(sample())
    changed = dataclasses.replace(ctr, name="renamed")
    exported = zones_to_ed269([changed, log])
    assert exported["features"][1] == SAMPLE["features"][1]
    assert exported["features"][0]["name"] == "renamed"
    assert zones_from_ed269(exported) == [changed, log]


def test_single_ring_polygon_is_accepted() -> None:
    ring = [[106.5, 29.5], [106.6, 29.5], [106.6, 29.6], [106.5, 29.5]]
    item = volume(horizontalProjection={"type": "Polygon", "coordinates": ring})
    (zone,) = zones_from_ed269([version(geometry=[item])])
    assert zone.geometry.equals(Polygon(ring))


def test_schedule_in_utc_and_with_offsets() -> None:
    applicability = [
        {
            "permanent": "NO",
            "startDateTime": "2026-01-01T00:00:00Z",
            "schedule": [
                {"day": ["MON", "TUE"], "startTime": "08:00Z", "endTime": "18:00:00.00Z"},
                # Beijing time: Monday 06:00-09:00 +08:00 is Sunday 22:00 to Monday 01:00 UTC
                {"day": ["MON"], "startTime": "06:00+08:00", "endTime": "09:00+08:00"},
                {"day": ["ANY"], "startTime": "23:30Z", "endTime": "24:00Z"},
            ],
        }
    ]
    (zone,) = zones_from_ed269([version(applicability=applicability)])
    assert zone.start == ts("2026-01-01T00:00:00") and zone.end is None
    assert zone.schedule == (
        (frozenset({0, 1}), 480, 1080),
        (frozenset({6}), 1320, 60),
        (frozenset(range(7)), 1410, 1440),
    )
    sunday = ts("2026-01-04T00:00:00")
    assert zone.active_at(sunday + 22.5 * 3600) and zone.active_at(sunday + 24.5 * 3600)
    assert not zone.active_at(sunday + 25 * 3600)
    assert zones_from_ed269(zones_to_ed269([zone])) == [zone]


def test_several_periods_with_one_window_unite_their_schedules() -> None:
    applicability = [
        {
            "permanent": "YES",
            "schedule": [{"day": ["MON"], "startTime": "08:00Z", "endTime": "09:00Z"}],
        },
        {
            "permanent": "YES",
            "schedule": [{"day": ["SUN"], "startTime": "10:00Z", "endTime": "11:00Z"}],
        },
    ]
    (zone,) = zones_from_ed269([version(applicability=applicability)])
    assert zone.schedule == ((frozenset({0}), 480, 540), (frozenset({6}), 600, 660))
    applicability.append({"permanent": "YES"})
    (always,) = zones_from_ed269([version(applicability=applicability)])
    assert always.schedule is None


@pytest.mark.parametrize(
    "zone",
    [
        Zone(
            id="multi",
            name="two parts",
            restriction="conditional",
            geometry=MultiPolygon(
                [
                    Polygon([(106.5, 29.5), (106.6, 29.5), (106.6, 29.6), (106.5, 29.5)]),
                    Polygon([(106.7, 29.5), (106.8, 29.5), (106.8, 29.6), (106.7, 29.5)]),
                ]
            ),
            lower_m=None,
            upper_m=150.0,
            reference="amsl",
            approach_m=30.0,
            authorized=frozenset({"CQ-1"}),
        ),
        Zone(
            id="circle",
            name="",
            restriction="advisory",
            geometry=Point(106.6, 29.7),
            radius_m=250.5,
            lower_m=10.0,
            upper_m=None,
            reference="wgs84",
            start=1_767_225_600.0,
            end=1_767_312_000.0,
            schedule=((frozenset({0, 4}), 0, 1440),),
        ),
    ],
)
def test_synthesised_zones_round_trip(zone: Zone) -> None:
    doc = json.loads(json.dumps(zones_to_ed269([zone])))
    assert zones_from_ed269(doc) == [zone]


@settings(max_examples=100, deadline=None)
@given(st.lists(zones(), min_size=1, max_size=4))
def test_round_trip_property(zone_list: list[Zone]) -> None:
    unique = [dataclasses.replace(z, id=f"Z{k}") for k, z in enumerate(zone_list)]
    first = zones_from_ed269(json.loads(json.dumps(zones_to_ed269(unique))))
    assert first == unique
    # and imported zones come back from their source documents, verbatim
    assert zones_from_ed269(zones_to_ed269(first)) == unique


def _mutate(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return apply


F0, F1 = ["features", 0], ["features", 1]
G1 = [*F1, "geometry", 0]
HP0 = ["features", 0, "geometry", 0, "horizontalProjection"]

INVALID = [
    (
        _mutate([*HP0, "radius"], -5),
        "features[0].geometry[0].horizontalProjection.radius",
        "ZUCK-CTR",
    ),
    (
        _mutate([*HP0, "radius"], "5000"),
        "features[0].geometry[0].horizontalProjection.radius",
        "ZUCK-CTR",
    ),
    (
        _mutate([*HP0, "center"], [106.6, 95.0]),
        "features[0].geometry[0].horizontalProjection.center[1]",
        "ZUCK-CTR",
    ),
    (
        _mutate([*HP0, "type"], "Ellipse"),
        "features[0].geometry[0].horizontalProjection.type",
        "ZUCK-CTR",
    ),
    (
        _mutate([*G1, "horizontalProjection", "coordinates", 0, 4], [106.75, 29.7]),
        "features[1].geometry[0].horizontalProjection.coordinates[0]",
        "MYH-LOG",
    ),
    (_mutate([*G1, "uomDimensions"], "KM"), "features[1].geometry[0].uomDimensions", "MYH-LOG"),
    (
        _mutate([*G1, "upperVerticalReference"], "QNH"),
        "features[1].geometry[0].upperVerticalReference",
        "MYH-LOG",
    ),
    (_mutate([*G1, "lowerLimit"], 500), "features[1].geometry[0].upperLimit", "MYH-LOG"),
    (_mutate([*F1, "geometry"], []), "features[1].geometry", "MYH-LOG"),
    (_mutate([*F1, "restriction"], "FORBIDDEN"), "features[1].restriction", "MYH-LOG"),
    (
        _mutate([*F1, "applicability", 0, "endDateTime"], "2025-01-01T00:00:00Z"),
        "features[1].applicability[0].endDateTime",
        "MYH-LOG",
    ),
    (
        _mutate([*F1, "applicability", 0, "startDateTime"], "soon"),
        "features[1].applicability[0].startDateTime",
        "MYH-LOG",
    ),
    (
        _mutate([*F1, "applicability", 0, "permanent"], "MAYBE"),
        "features[1].applicability[0].permanent",
        "MYH-LOG",
    ),
    (
        _mutate([*F1, "applicability"], [{"permanent": "NO"}]),
        "features[1].applicability[0]",
        "MYH-LOG",
    ),
    (
        _mutate(
            [*F1, "applicability", 0, "schedule"],
            [{"day": ["XYZ"], "startTime": "08:00Z", "endTime": "09:00Z"}],
        ),
        "features[1].applicability[0].schedule[0].day",
        "MYH-LOG",
    ),
    (
        _mutate(
            [*F1, "applicability", 0, "schedule"],
            [{"day": ["MON"], "startTime": "8am", "endTime": "09:00Z"}],
        ),
        "features[1].applicability[0].schedule[0].startTime",
        "MYH-LOG",
    ),
    (
        _mutate(
            [*F1, "applicability"],
            [{"permanent": "YES"}, {"permanent": "NO", "startDateTime": "2026-01-01T00:00:00Z"}],
        ),
        "features[1].applicability[1]",
        "MYH-LOG",
    ),
    (_mutate([*F1, "identifier"], "ZUCK-CTR"), "features[1].identifier", "ZUCK-CTR"),
    (_mutate([*F1, "identifier"], ""), "features[1].identifier", ""),
    (
        _mutate([*F1, "extendedProperties"], {"lowalt": {"approach_m": -1}}),
        "features[1].extendedProperties.lowalt.approach_m",
        "MYH-LOG",
    ),
    (_mutate([*F0], "not a zone"), "features[0]", ""),
    (_mutate(["features"], {"a": 1}), "features", ""),
]


@pytest.mark.parametrize(("mutate", "field", "identifier"), INVALID)
def test_invalid_document_names_feature_and_field(
    mutate: Callable[[dict[str, Any]], None], field: str, identifier: str
) -> None:
    doc = sample()
    mutate(doc)
    with pytest.raises(ValidationError) as caught:
        zones_from_ed269(doc)
    assert caught.value.field == field, caught.value
    assert identifier in caught.value.reason


@pytest.mark.parametrize("doc", [None, "features", 3])
def test_not_a_document(doc: object) -> None:
    with pytest.raises(ValidationError, match="document"):
        zones_from_ed269(doc)


def test_export_refuses_duplicate_ids() -> None:
    ctr, _ = zones_from_ed269(sample())
    with pytest.raises(ValidationError, match=r"zones\[1\]\.id"):
        zones_to_ed269([ctr, ctr])
