"""The command line as outside scripts use it (API.md section 10), on both backends."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from geofence.service import zone_store_for, zones_from_stored
from lowalt.auth import hash_token
from lowalt.settings import Settings
from lowalt.storage import create_store
from tests.conftest import GOLDEN


def lowalt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lowalt.cli", *args], capture_output=True,
                          text=True, timeout=120)


async def test_token_uav_and_zone_commands(database_url: str, settings: Settings) -> None:
    made = lowalt("token", "create", "--role", "operator", "--operator", "op1",
                  "--database", database_url)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert made.stdout == token + "\n" and token.startswith("lwt_")  # the token and nothing else
    assert lowalt("token", "create", "--role", "operator", "--database",
                  database_url).returncode == 2  # an operator token needs --operator
    reg = lowalt("uav", "register", "CQ-7", "--operator", "op1", "--alias", "780A27",
                 "--priority", "--database", database_url)
    assert reg.returncode == 0, reg.stderr
    imported = lowalt("zones", "import", str(GOLDEN / "ed269_sample.json"), "--database",
                      database_url)
    assert imported.returncode == 0, imported.stderr
    ids = imported.stdout.split()
    again = lowalt("zones", "import", str(GOLDEN / "ed269_sample.json"), "--database",
                   database_url)
    assert again.returncode == 1 and "nothing imported" in again.stderr
    store = create_store(settings)
    await store.open()
    try:
        record = await store.token_by_hash(hash_token(token))
        assert record is not None and (record.role, record.operator) == ("operator", "op1")
        (uav,) = await store.uavs()
        assert (uav.uav, uav.operator, uav.aliases, uav.priority) == ("CQ-7", "op1", ("780A27",),
                                                                      True)
        zones = zones_from_stored(await zone_store_for(store).load())
        assert sorted(z.id for z in zones) == sorted(ids)
    finally:
        await store.close()
    revoked = lowalt("token", "revoke", token, "--database", database_url)
    assert revoked.returncode == 0
    assert lowalt("token", "revoke", token, "--database", database_url).returncode == 1


def test_usage_errors_exit_2_with_one_line() -> None:
    for args in (["token", "create", "--role", "pilot"], ["frobnicate"], ["serve", "--http", "x"]):
        proc = lowalt(*args)
        assert proc.returncode == 2, args
        assert proc.stderr.strip().count("\n") == 0, proc.stderr


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    for which in ("http", "gateway"):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            ports = {"http": "127.0.0.1:0", "gateway": "127.0.0.1:0", which: f"127.0.0.1:{port}"}
            proc = lowalt("serve", "--http", ports["http"], "--gateway", ports["gateway"],
                          "--database", f"sqlite:///{tmp_path / 'lowalt.db'}")
        assert proc.returncode == 1, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("lowalt: cannot listen") and str(port) in last, proc.stderr
        assert "Traceback" not in proc.stderr


def test_gc_policy_freezes_the_heap_and_raises_the_young_threshold() -> None:
    code = ("import gc; from lowalt.gcpolicy import tune_gc, YOUNG_THRESHOLD; "
            "before = gc.get_freeze_count(); tune_gc(); "
            "print(before, gc.get_freeze_count() > 1000, gc.get_threshold()[0] == YOUNG_THRESHOLD)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["0", "True", "True"], out.stderr
