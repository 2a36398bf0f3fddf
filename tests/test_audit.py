"""The audit log: every administrative action, who did it, in order, persisted on both backends."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

import pytest

from lowalt.audit import audit, audit_log_for
from lowalt.models import Principal
from lowalt.settings import Settings
from lowalt.storage import create_store
from tests.conftest import GOLDEN, Server
from tests.test_geofence_e2e import JIANGBEI


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def records(server: Server, admin: str, **params: str) -> list[dict[str, Any]]:
    r = await server.client.get("/v1/audit", params=params, headers=auth(admin))
    assert r.status == 200
    body = await r.json()
    assert body["next"] == (body["records"][-1]["id"] if body["records"]
                            else int(params.get("since", 0)))
    found: list[dict[str, Any]] = body["records"]
    return found


async def test_every_administrative_action_is_recorded(server: Server) -> None:
    admin = await server.token("admin", name="root")
    reg = await server.token("regulator", name="caac-sw")
    c = server.client
    r = await c.post("/v1/tokens", json={"role": "gateway", "name": "station-9"},
                     headers=auth(admin))
    made = await r.json()
    assert (await c.delete(f"/v1/tokens/{made['id']}", headers=auth(admin))).status == 204
    assert (await c.post("/v1/uavs", json={"uav": "U1", "operator": "op1"},
                         headers=auth(reg))).status == 201
    assert (await c.patch("/v1/uavs/U1", json={"model": "M30"}, headers=auth(reg))).status == 200
    assert (await c.post("/v1/zones", json=JIANGBEI, headers=auth(reg))).status == 201
    r = await c.post("/v1/zones/import", params={"format": "ed269"},
                     data=(GOLDEN / "ed269_sample.json").read_bytes(), headers=auth(reg))
    imported = (await r.json())["imported"]
    assert (await c.delete("/v1/zones/jiangbei-ctr", headers=auth(reg))).status == 200
    r = await c.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/hook",
                                                "secret": "s3cret-value", "name": "ops"},
                     headers=auth(reg))
    sub = await r.json()
    assert (await c.delete(f"/v1/subscriptions/{sub['id']}", headers=auth(reg))).status == 204
    # Refused or failed actions change nothing and are not recorded.
    assert (await c.post("/v1/zones", json=JIANGBEI, headers=auth(await server.token(
        "operator", "op1")))).status == 403
    assert (await c.delete("/v1/zones/nope", headers=auth(reg))).status == 404

    found = await records(server, admin)
    assert [(x["actor"], x["role"], x["action"], x["target"]) for x in found] == [
        ("root", "admin", "token.create", str(made["id"])),
        ("root", "admin", "token.revoke", str(made["id"])),
        ("caac-sw", "regulator", "uav.register", "U1"),
        ("caac-sw", "regulator", "uav.patch", "U1"),
        ("caac-sw", "regulator", "zone.create", "jiangbei-ctr"),
        ("caac-sw", "regulator", "zone.import", ",".join(imported)),
        ("caac-sw", "regulator", "zone.delete", "jiangbei-ctr"),
        ("caac-sw", "regulator", "subscription.create", str(sub["id"])),
        ("caac-sw", "regulator", "subscription.delete", str(sub["id"])),
    ]
    ids = [x["id"] for x in found]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert found[0]["detail"] == {"name": "station-9", "role": "gateway", "operator": None,
                                  "expires_at": None}
    assert found[3]["detail"] == {"model": "M30"}
    assert found[7]["detail"] == {"name": "ops", "url": "http://127.0.0.1:9/hook", "types": []}
    text = json.dumps(found)
    assert made["token"] not in text and "s3cret-value" not in text  # no secret is logged
    # Paging: since is exclusive, limit bounds the page.
    page = await records(server, admin, since=str(ids[1]), limit="2")
    assert [x["id"] for x in page] == ids[2:4]
    assert await records(server, admin, since=str(ids[-1])) == []
    for bad in ({"since": "-1"}, {"limit": "0"}, {"limit": "10001"}, {"since": "x"}):
        r = await c.get("/v1/audit", params=bad, headers=auth(admin))
        assert r.status == 400


async def test_other_code_records_through_the_app_or_runtime(server: Server) -> None:
    admin = await server.token("admin")
    op = Principal(7, "logistics", "operator", "op1")
    app = server.client.app
    assert app is not None
    await audit(app, op, "clearance.grant", "c-17", {"uav": "U1"})
    await audit(server.runtime, op, "clearance.deny", "c-18", {"reasons": [{"zone": "z"}]})
    found = await records(server, admin)
    assert [(x["actor"], x["actor_token_id"], x["action"], x["target"], x["detail"])
            for x in found] == [
        ("logistics", 7, "clearance.grant", "c-17", {"uav": "U1"}),
        ("logistics", 7, "clearance.deny", "c-18", {"reasons": [{"zone": "z"}]}),
    ]


async def test_cli_actions_are_recorded_and_survive_a_restart(
    database_url: str, settings: Settings
) -> None:
    async def lowalt(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lowalt.cli", *args, "--database", database_url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err
        return out.decode().strip()

    token = await lowalt("token", "create", "--role", "gateway", "--name", "gw-1")
    await lowalt("token", "revoke", token)
    await lowalt("uav", "register", "CQ-9", "--operator", "op1", "--alias", "AB12CD")
    store = create_store(settings)  # a new process's view: read back from the database
    await store.open()
    try:
        found = await audit_log_for(store).records(0, 100)
    finally:
        await store.close()
    assert [(x.actor, x.role, x.action) for x in found] == [
        ("cli", "cli", "token.create"), ("cli", "cli", "token.revoke"),
        ("cli", "cli", "uav.register")]
    assert found[0].target == found[1].target and found[0].actor_token_id is None
    assert found[2].detail["aliases"] == ["AB12CD"]
    assert token not in json.dumps([x.as_json() for x in found])


async def test_an_unstorable_record_is_logged_not_raised(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    store = create_store(settings)
    await store.open()
    await store.close()  # storage is away
    with caplog.at_level(logging.ERROR, logger="lowalt.audit"):
        await audit(store, None, "zone.delete", "z-1")
    (entry,) = caplog.records
    assert "audit record not stored" in entry.getMessage()
    assert '"zone.delete", "z-1"' in entry.getMessage()
