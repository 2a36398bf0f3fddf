"""What the benchmarks share: a server process on fresh storage, percentiles, CPU and RSS of a
process, and progress lines with rate and ETA for the long runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

PG_ADMIN = os.environ.get("LOWALT_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_kib(pid: int) -> int:
    """Resident set size of a process (Linux), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds so far of a process and the processes it started that are
    running (the server's zone worker) or that it waited for (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # its own and its waited-for children's
    for child in _children(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ticks += sum(int(f) for f in
                         Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[11:13])
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """The running descendants of a process (Linux)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    found.append(int(child))
                    found.extend(_children(int(child)))
    return found


def metric_samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """The samples of a Prometheus text page (the server's /metrics): name, labels, value."""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name, _, labels = series.partition("{")
        yield name, dict(_LABEL.findall(labels)), float(value)


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def log(message: str) -> None:
    """Progress goes to stderr, so stdout keeps only the results."""
    print(message, file=sys.stderr, flush=True)


class Progress:
    """Periodic lines `label: 12/30 s, 51,234 obs/s, ETA 18 s` during a timed run."""

    def __init__(self, label: str, seconds: float, unit: str = "obs",
                 every_s: float = 5.0) -> None:
        self.label, self.seconds, self.unit, self.every_s = label, seconds, unit, every_s
        self.started = self.last = time.monotonic()
        self.last_count = 0

    def update(self, count: int) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return
        rate = (count - self.last_count) / (now - self.last)
        elapsed = now - self.started
        log(f"  {self.label}: {elapsed:.0f}/{self.seconds:.0f} s, {rate:,.0f} {self.unit}/s, "
            f"ETA {max(0.0, self.seconds - elapsed):.0f} s")
        self.last, self.last_count = now, count


def postgres_unavailable() -> str | None:
    """None when the benchmark PostgreSQL answers, else why not."""
    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN, timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"PostgreSQL unavailable at {PG_ADMIN}: {exc}"
    return None


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    http_port: int
    gateway_port: int
    database_url: str

    def cli(self, *args: str) -> str:
        """Run `lowalt ARGS --database URL` and return its stdout."""
        return lowalt_cli(self.database_url, *args)


def lowalt_cli(database_url: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "lowalt.cli", *args, "--database", database_url],
        check=True, capture_output=True, timeout=600,
    )
    return out.stdout.decode().strip()


_counter = 0


@contextlib.contextmanager
def database(backend: str) -> Iterator[str]:
    """A fresh, empty database for one benchmark run, migrated."""
    global _counter
    _counter += 1
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/bench.db"
            lowalt_cli(url, "migrate")
            yield url
        return
    name = f"lowalt_bench_{os.getpid()}_{_counter}"
    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    asyncio.run(_pg_admin(drop, f'CREATE DATABASE "{name}"'))
    try:
        url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
        lowalt_cli(url, "migrate")
        yield url
    finally:
        asyncio.run(_pg_admin(drop))


async def _pg_admin(*sql: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN)
    try:
        for statement in sql:
            await conn.execute(statement)
    finally:
        await conn.close()


@contextlib.contextmanager
def server(database_url: str, extra_env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """`lowalt serve` on free loopback ports, until the block ends (SIGTERM, then SIGKILL)."""
    http_port, gateway_port = free_port(), free_port()
    env = {**os.environ, "LOWALT_LOG_LEVEL": "WARNING", **(extra_env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lowalt.cli", "serve", "--database", database_url,
         "--http", f"127.0.0.1:{http_port}", "--gateway", f"127.0.0.1:{gateway_port}"],
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with status {proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", gateway_port), timeout=0.5
            ):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("server did not start")
        yield ServerProcess(proc, http_port, gateway_port, database_url)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
