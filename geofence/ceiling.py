"""The national AGL ceiling and the zones that raise it (`Zone.ceiling_agl_m`).

`max_agl_m` (120 m: the top of China's suitable-flight airspace for light UAVs) holds everywhere
unless something authorises more:
- a zone with `ceiling_agl_m`: inside its horizontal shape, while it is active (window and
  schedule), the ceiling is the higher of `max_agl_m` and `ceiling_agl_m`, for every UAV, or only
  for the zone's `authorized` UAVs when it lists any. Its altitude band and restriction do not
  matter here (they still govern breaches). Where several such zones cover a point, the highest
  ceiling holds;
- a granted or active clearance: a UAV inside its own corridor and time window is authorised up
  to the corridor's top, which a decision only grants above `max_agl_m` where zones authorise it
  for the whole piece and its whole window (`CeilingZones.piece_ceilings`). So a ceiling zone
  deleted after the grant does not retract the clearance, as for any zone.

`CeilingZones` is built with each ZoneIndex snapshot from the degree polygons it already made
(circles included) and is empty, costing nothing per observation, when no zone sets a ceiling.
Observations at or under `max_agl_m` never reach it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import shapely

from geofence.zones import MINUTES_PER_WEEK, Zone, minute_of_week, schedule_week_mask

__all__ = ["Authorises", "CeilingZones", "over_ceiling"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Geoms = npt.NDArray[np.object_]
# (uav, lon, lat, alt_m, t) -> whether a clearance of uav holds this 4D point
Authorises = Callable[[str, float, float, float, float], bool]


class CeilingZones:
    """The zones of one snapshot that set `ceiling_agl_m`, in an STRtree over their polygons."""

    __slots__ = ("_auth", "_ceiling", "_end", "_polygons", "_sched_mask", "_sched_row",
                 "_start", "_tree", "zones")

    def __init__(self, zones: Sequence[Zone], polygons: Geoms) -> None:
        """`polygons[k]`: zone k's horizontal shape in lon/lat degrees (a circle's outline)."""
        keep = [k for k, z in enumerate(zones) if z.ceiling_agl_m is not None]
        self.zones = [zones[k] for k in keep]
        self._polygons: Geoms = polygons[np.array(keep, np.int64)]
        self._ceiling = np.array([z.ceiling_agl_m for z in self.zones], np.float64)
        self._start = np.array([-np.inf if z.start is None else z.start for z in self.zones])
        self._end = np.array([np.inf if z.end is None else z.end for z in self.zones])
        self._auth = [z.authorized for z in self.zones]
        scheduled = [k for k, z in enumerate(self.zones) if z.schedule is not None]
        self._sched_row = np.full(len(self.zones), -1, np.int64)
        self._sched_row[scheduled] = np.arange(len(scheduled))
        self._sched_mask = np.array(
            [schedule_week_mask(self.zones[k].schedule or ()) for k in scheduled], np.bool_
        ).reshape(len(scheduled), MINUTES_PER_WEEK)
        self._tree = shapely.STRtree(self._polygons)

    def __len__(self) -> int:
        return len(self.zones)

    def _for_uav(self, zone: I64, uav: Sequence[str], rows: I64) -> npt.NDArray[np.bool_]:
        """Per pair: whether the zone's ceiling applies to the row's UAV (no list, or listed)."""
        return np.fromiter(
            (not self._auth[z] or uav[i] in self._auth[z]
             for z, i in zip(zone.tolist(), rows.tolist(), strict=True)),
            np.bool_, zone.size,
        )

    def ceilings_at(self, lon: F64, lat: F64, t: F64, uav: Sequence[str], base_m: float) -> F64:
        """The ceiling in force at each point and time for its UAV: the highest of `base_m` and
        the ceilings of the zones covering the point (edge included), active at t."""
        ceiling = np.full(lon.size, base_m)
        if not self.zones or not lon.size:
            return ceiling
        obs, zone = self._tree.query(shapely.points(lon, lat), predicate="intersects")
        tt = t[obs]
        keep = (tt >= self._start[zone]) & (tt <= self._end[zone])
        rows = self._sched_row[zone]
        scheduled = np.flatnonzero(keep & (rows >= 0))
        keep[scheduled] = self._sched_mask[rows[scheduled], minute_of_week(tt[scheduled])]
        obs, zone = obs[keep], zone[keep]
        keep = self._for_uav(zone, uav, obs)
        np.maximum.at(ceiling, obs[keep], self._ceiling[zone[keep]])
        return ceiling

    def _active_throughout(self, z: int, t0: float, t1: float) -> bool:
        if not (self._start[z] <= t0 and t1 <= self._end[z]):
            return False
        row = int(self._sched_row[z])
        if row < 0:
            return True
        minutes = np.arange(int(minute_of_week(t0)), int(minute_of_week(t0)) + 1
                            + int(np.floor(t1 / 60.0) - np.floor(t0 / 60.0)))
        return bool(self._sched_mask[row, minutes % MINUTES_PER_WEEK].all())

    def piece_ceilings(self, polygons: Geoms, t0: F64, t1: F64, uav: str,
                       base_m: float) -> F64:
        """The ceiling in force over each whole piece of a route (a corridor polygon flown from
        t0 to t1): the highest c such that the zones applying to `uav`, active all through
        [t0, t1], with a ceiling of at least c, cover the polygon together; else `base_m`."""
        ceiling = np.full(len(polygons), base_m)
        if not self.zones or not len(polygons):
            return ceiling
        piece, zone = self._tree.query(polygons, predicate="intersects")
        keep = self._for_uav(zone, [uav], np.zeros(zone.size, np.int64))
        piece, zone = piece[keep], zone[keep]
        for i in np.unique(piece).tolist():
            mine = [z for z in zone[piece == i].tolist()
                    if self._active_throughout(z, float(t0[i]), float(t1[i]))]
            mine.sort(key=lambda z: -self._ceiling[z])
            for j, z in enumerate(mine):
                if not self._ceiling[z] > ceiling[i]:
                    break
                cover = shapely.union_all(self._polygons[mine[: j + 1]])
                if shapely.covers(cover, polygons[i]):
                    ceiling[i] = self._ceiling[z]
                    break
        return ceiling


def over_ceiling(
    ceilings: CeilingZones, lon: F64, lat: F64, agl_m: F64, alt_m: F64, t: F64,
    uav: Sequence[str], max_agl_m: float, authorises: Authorises | None,
) -> tuple[list[int], list[float]]:
    """The rows above the AGL ceiling in force where and when they are, and that ceiling: above
    `max_agl_m`, not raised enough there by a zone, and not inside a clearance of their UAV.
    A NaN height is above nothing."""
    over = np.flatnonzero(agl_m > max_agl_m)
    limit = ceilings.ceilings_at(lon[over], lat[over], t[over], [uav[k] for k in over.tolist()],
                                 max_agl_m)
    above = agl_m[over] > limit
    rows, found = over[above].tolist(), limit[above].tolist()
    if authorises is None or not rows:
        return rows, found
    kept = [(k, c) for k, c in zip(rows, found, strict=True)
            if not authorises(uav[k], float(lon[k]), float(lat[k]), float(alt_m[k]), float(t[k]))]
    return [k for k, _ in kept], [c for _, c in kept]
