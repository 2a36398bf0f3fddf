"""The SQLite writer alone, by key order of the observations table (lowalt/storage/sqlite.py).

    .venv/bin/python -m benchmarks.bench_sqlite_layout [--seconds 30] [--uavs 10000]

Groups of 1,000 rows from `--uavs` UAVs reporting in turn, one transaction each, WAL and
`synchronous=FULL` as the server writes them, into a fresh file per layout: keyed (uav, t) with
an index on t (schema version 1), and keyed (t, uav) with an index on (uav, t) (version 2).
Prints rows/s per 5 s, so the slowdown as the table grows shows.
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path

from lowalt.models import OBSERVATION_COLUMNS

COLUMNS = (
    "uav TEXT NOT NULL, t REAL NOT NULL, lat REAL NOT NULL, lon REAL NOT NULL, "
    "alt_m REAL NOT NULL, speed_mps REAL, track_deg REAL, vspeed_mps REAL, agl_m REAL, "
    "status TEXT, acc_h_m REAL, acc_v_m REAL, source TEXT NOT NULL, received_at REAL NOT NULL"
)
LAYOUTS = {
    "uav_t": f"CREATE TABLE observations ({COLUMNS}, PRIMARY KEY (uav, t)) WITHOUT ROWID; "
             "CREATE INDEX observations_t ON observations (t);",
    "t_uav": f"CREATE TABLE observations ({COLUMNS}, PRIMARY KEY (t, uav)) WITHOUT ROWID; "
             "CREATE INDEX observations_uav_t ON observations (uav, t);",
}
GROUP = 1_000
INSERT = (f"INSERT OR IGNORE INTO observations ({', '.join(OBSERVATION_COLUMNS)}) "
          f"VALUES ({', '.join('?' * len(OBSERVATION_COLUMNS))})")


def run(layout: str, path: Path, seconds: float, uavs: int) -> list[float]:
    """rows/s of each 5 s of writing."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(LAYOUTS[layout])
    names = [f"UAV{k:05d}" for k in range(uavs)]
    t0, k, rates = 1.76e9, 0, []
    started = last = time.perf_counter()
    written = 0
    while last - started < seconds:
        rows = []
        for _ in range(GROUP):
            u = k % uavs
            t = t0 + k // uavs + u * 1e-5
            rows.append((names[u], t, 29.6, 106.5, 100.0, 10.0, 90.0, 0.0, 50.0, "airborne",
                         5.0, 7.0, "bench/gateway/native", t))
            k += 1
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT, rows)
        conn.execute("COMMIT")
        written += GROUP
        now = time.perf_counter()
        if now - last >= 5.0:
            rates.append(written / (now - last))
            print(f"{layout}: {now - started:5.1f} s, {rates[-1]:9,.0f} rows/s", flush=True)
            last, written = now, 0
    conn.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--uavs", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for layout in LAYOUTS:
            run(layout, Path(tmp) / f"{layout}.db", args.seconds, args.uavs)


if __name__ == "__main__":
    main()
