"""Two versions of lowalt side by side: the gateway benchmark against each at the same time.

On this shared 2-core VM, runs of one code minutes apart differ by up to 20 %, more than most
changes are worth. Two pipelines run at once (each its own fresh database, server and load
generator, all on the one machine) see the same spell, so the ratio of their rates is steady
where their rates are not: it tells which version does more with the same share of the machine.
It is not a figure of either alone (each has about half the machine), and not a cut: compare the
same MODE in both. Swap the trees between rounds to cancel any advantage of a side. The two
sides share the machine by runnable threads and processes: a version that runs more of them
(the zone worker, a helper thread) gets a larger share and looks better than it is alone; rank
such versions with runs of each alone, in one sitting (`lowalt bench geofence` does so for the
zone worker).

    python -m benchmarks.pair TREE_A TREE_B [--mode zones|bare] [--seconds S] [--rounds N]
        [--backend postgres|sqlite] [--zones N]
    python -m benchmarks.pair --one --mode zones --seconds 30    # one pipeline, this tree

TREE: a directory holding a version of the repository (`git archive REV | tar -x -C DIR`); each
side runs with that directory as its working directory and `PYTHONPATH`, so it runs its own code
and migrations. Zones: `bench_geofence.random_zones(N)` imported before the server starts.
Prints one JSON line per round: each side's figures and `b_over_a`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import lowalt
from benchmarks.harness import database, log


def one(mode: str, seconds: float, backend: str, zones: int) -> dict[str, Any]:
    """One pipeline of this tree: fresh storage, the zones for mode `zones`, one server, the
    gateway load of the ingest benchmark (4 connections); its figures, and where its code is."""
    import numpy as np

    from benchmarks.bench_geofence import import_zones, random_zones
    from benchmarks.bench_ingest import gateway_run

    with database(backend) as url:
        if mode == "zones":
            import_zones(url, random_zones(zones, np.random.default_rng(1)))
        result = gateway_run(url, 4, seconds, label=f"pair {mode}")
    # The server runs from the same directory and path as this process: the same code.
    result["code"] = str(Path(lowalt.__file__).resolve().parents[1])
    return result


def _side(tree: Path, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.pair", "--one", "--mode", args.mode, "--seconds",
         str(args.seconds), "--backend", args.backend, "--zones", str(args.zones)],
        cwd=tree, env=env, stdout=subprocess.PIPE)


def pair(a: Path, b: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Both sides at once; their figures and the ratio of B's rate to A's."""
    sides = [_side(a, args), _side(b, args)]
    out = []
    try:
        for tree, proc in zip((a, b), sides, strict=True):
            stdout, _ = proc.communicate(timeout=args.seconds + 600)
            if proc.returncode != 0:
                raise RuntimeError(f"{tree}: the run failed (exit {proc.returncode})")
            result = json.loads(stdout.decode().strip().splitlines()[-1])
            if Path(result["code"]) != tree:  # e.g. a tree without lowalt: the installed one ran
                raise RuntimeError(f"{tree}: the run failed (it ran the code in "
                                   f"{result['code']})")
            out.append(result)
    finally:
        for proc in sides:  # the other side too, when one failed: SIGINT lets it stop its
            if proc.poll() is None:  # server and drop its database
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return {"mode": args.mode, "a": {"tree": str(a), **out[0]}, "b": {"tree": str(b), **out[1]},
            "b_over_a": round(out[1]["obs_per_s"] / max(1, out[0]["obs_per_s"]), 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pair", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="*", type=Path, help="TREE_A TREE_B")
    parser.add_argument("--one", action="store_true", help="one pipeline of this tree")
    parser.add_argument("--mode", choices=("zones", "bare"), default="zones")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2, help="rounds; every second one swaps")
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--zones", type=int, default=10_000)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.mode, args.seconds, args.backend, args.zones)), flush=True)
        return
    if len(args.trees) != 2:
        parser.error("give two trees, or --one")
    a, b = (t.resolve() for t in args.trees)
    for k in range(args.rounds):
        log(f"pair: round {k + 1} of {args.rounds}, {args.mode}, {args.seconds:g} s")
        result = pair(a, b, args) if k % 2 == 0 else _swapped(pair(b, a, args))
        print(json.dumps(result), flush=True)


def _swapped(result: dict[str, Any]) -> dict[str, Any]:
    """A round run with the sides swapped, reported as A and B all the same."""
    a, b = result["b"], result["a"]
    return {**result, "a": a, "b": b,
            "b_over_a": round(b["obs_per_s"] / max(1, a["obs_per_s"]), 3), "swapped": True}


if __name__ == "__main__":
    main()
