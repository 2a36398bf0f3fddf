"""Binary COPY data built with numpy (lowalt/storage/pgcopy.py), read back by PostgreSQL itself:
every column, NULLs in any mix, text of any length and script, in whatever column order the
encoder picks."""

from __future__ import annotations

import random
import struct

import asyncpg
import pytest

from lowalt.models import OBSERVATION_COLUMNS, Observation, Rows, floats_of
from lowalt.storage.pgcopy import HEADER, TRAILER, copy_data
from lowalt.storage.postgres import _STAGING
from tests.conftest import truncate_postgres

T0 = 1_764_000_000.0


def _rows(seed: int, n: int) -> list[Observation]:
    """Rows of a shape drawn per seed: each optional column always, never or sometimes NULL;
    uav, status and source of one length or of many."""
    rnd = random.Random(seed)
    null_rate = {name: rnd.choice([0.0, 1.0, 0.3]) for name in
                 ("speed_mps", "track_deg", "vspeed_mps", "agl_m", "acc_h_m", "acc_v_m")}
    statuses: list[list[str | None]] = [
        [None], ["airborne"], [None, "ground", "emergency", "lost_link"]]
    status_pool = rnd.choice(statuses)
    source_pool = rnd.choice([["gw/gateway/native"], ["a/http/json", "rx-北碚/gateway/f3411",
                                                       "b/ws/msgpack"]])
    wide = rnd.random() < 0.5

    def value(name: str, x: float) -> float | None:
        return None if rnd.random() < null_rate[name] else x

    return [Observation(
        f"U{k:05d}" if not wide else "V" + "x" * rnd.randint(0, 60),
        T0 + k * 0.001 + rnd.random() * 1e-4, rnd.uniform(-90, 90), rnd.uniform(-180, 180),
        rnd.uniform(-500, 20000), value("speed_mps", rnd.uniform(0, 300)),
        value("track_deg", rnd.uniform(0, 359.99)), value("vspeed_mps", rnd.uniform(-50, 50)),
        value("agl_m", rnd.uniform(-500, 20000)), rnd.choice(status_pool),
        value("acc_h_m", rnd.uniform(0, 100)), value("acc_v_m", rnd.uniform(0, 100)),
        rnd.choice(source_pool), T0 + rnd.random()) for k in range(n)]


@pytest.mark.parametrize("seed", range(12))
async def test_postgresql_reads_back_exactly_the_rows(pg_url: str, seed: int) -> None:
    rows = _rows(seed, random.Random(-seed).choice([1, 2, 37, 1500]))
    await truncate_postgres(pg_url)
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(_STAGING)
        columns, data = copy_data(rows)
        assert sorted(columns) == sorted(OBSERVATION_COLUMNS)
        async with conn.transaction():
            await conn.copy_to_table("obs_staging", source=data, columns=columns,
                                     format="binary")
            back = await conn.fetch(f"SELECT {', '.join(OBSERVATION_COLUMNS)} FROM obs_staging")
    finally:
        await conn.close()
    assert sorted(Observation(*r) for r in back) == sorted(rows)


def test_the_data_is_framed_as_the_binary_format_says() -> None:
    rows = _rows(3, 5)
    _, data = copy_data(rows)
    raw = bytes(data)
    assert raw.startswith(HEADER) and raw.endswith(TRAILER)
    at, count = len(HEADER), 0
    while raw[at:at + 2] != TRAILER:  # walk every row and field by its length word
        (fields,) = struct.unpack_from("!h", raw, at)
        assert fields == len(OBSERVATION_COLUMNS)
        at += 2
        for _ in range(fields):
            (size,) = struct.unpack_from("!i", raw, at)
            at += 4 + max(size, 0)
        count += 1
    assert count == len(rows) and at + 2 == len(raw)


def test_columns_the_stages_share_are_built_once() -> None:
    rows = Rows(_rows(1, 40))
    copy_data(rows)
    assert not floats_of(rows, "lat").flags.writeable  # built by the encoder, kept for them
    assert floats_of(rows, "lat") is floats_of(rows, "lat")
