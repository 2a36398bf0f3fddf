"""Webhooks against real receivers on loopback, on both backends: signatures checked by an
independent HMAC, seq order per subscription, retries, isolation from dead endpoints, dead letter,
resumption after a clean restart and after SIGKILL, and subscriptions from the config file."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from dispatch.store import alert_store_for
from lowalt.app import RUNTIME
from lowalt.settings import Settings, load_settings, replace
from lowalt.storage import create_store
from tests.conftest import Server
from tests.test_feeds import (
    SseReader,
    auth,
    breach,
    eventually,
    manager_of,
    running,
    token_for,
)

SECRET = "s3cret"
FAST_RETRY = {"webhook_retry_base_s": 0.05, "webhook_retry_max_s": 0.2}
REPO = Path(__file__).resolve().parents[1]


class Receiver:
    """A webhook endpoint on loopback that checks every signature itself."""

    def __init__(self, secret: str = SECRET, mode: str = "ok", fail_first: int = 0,
                 delay_s: float = 0.0) -> None:
        self.secret, self.mode, self.fail_first, self.delay_s = secret, mode, fail_first, delay_s
        self.attempts = 0
        self.in_flight = 0
        self.batches: list[list[int]] = []  # seqs of every accepted POST, in arrival order
        self.events: dict[int, dict[str, Any]] = {}
        self.problems: list[str] = []
        self.changed = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.url = ""

    @property
    def seqs(self) -> list[int]:
        return [seq for batch in self.batches for seq in batch]

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        self.in_flight += 1
        self.changed.set()
        try:
            body = await request.read()
            expected = "sha256=" + hmac.new(self.secret.encode(), body,
                                            hashlib.sha256).hexdigest()
            if not hmac.compare_digest(request.headers.get("X-Lowalt-Signature", ""), expected):
                self.problems.append("bad signature")
                return web.Response(status=401)
            if self.mode == "hang":
                await asyncio.sleep(3600)
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.mode == "500" or self.attempts <= self.fail_first:
                return web.Response(status=500)
            events = json.loads(body)["events"]
            seqs = [e["seq"] for e in events]
            if request.headers["X-Lowalt-Seq-Range"] != f"{seqs[0]}-{seqs[-1]}":
                self.problems.append("bad seq range header")
            self.batches.append(seqs)
            self.events.update((e["seq"], e) for e in events)
            return web.Response(status=200)
        finally:
            self.in_flight -= 1
            self.changed.set()

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.2, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def wait_until(self, done: Callable[[Receiver], bool], timeout_s: float = 20.0) -> None:
        async def wait() -> None:
            while not done(self):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(wait(), timeout_s)


@asynccontextmanager
async def receivers(*rs: Receiver) -> AsyncIterator[None]:
    for r in rs:
        await r.start()
    try:
        yield
    finally:
        for r in rs:
            await r.stop()


def refused_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/hook"


async def subscribe(client: TestClient[Any, Any], token: str, url: str,
                    types: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    r = await client.post("/v1/subscriptions", headers=auth(token),
                          json={"url": url, "secret": SECRET, "types": types or [], **extra})
    assert r.status == 201, await r.text()
    body: dict[str, Any] = await r.json()
    return body


async def subscriptions(client: TestClient[Any, Any], token: str) -> list[dict[str, Any]]:
    r = await client.get("/v1/subscriptions", headers=auth(token))
    assert r.status == 200
    subs: list[dict[str, Any]] = (await r.json())["subscriptions"]
    return subs


async def test_signed_ordered_batches_with_type_filter(server: Server) -> None:
    everything, altitude = Receiver(), Receiver()
    async with receivers(everything, altitude):
        reg = await server.token("regulator")
        c = server.client
        sub = await subscribe(c, reg, everything.url, name="supervision")
        assert "secret" not in sub and sub["state"] == "active" and sub["name"] == "supervision"
        await subscribe(c, reg, altitude.url, ["altitude_limit"])
        m = manager_of(server)
        for k in range(250):
            kind = "altitude_limit" if k % 3 == 0 else "geofence_breach"
            await m.open_or_update(breach(f"U{k % 4}", f"Z{k}", type=kind))
        await m.flush(10)
        await everything.wait_until(lambda r: len(r.seqs) >= 250)
        want_altitude = [s for s in range(1, 251) if (s - 1) % 3 == 0]
        await altitude.wait_until(lambda r: len(r.seqs) >= len(want_altitude))
    assert everything.seqs == list(range(1, 251))  # in seq order, each once
    assert max(len(b) for b in everything.batches) == 100 and len(everything.batches) >= 3
    assert altitude.seqs == want_altitude
    assert everything.problems == altitude.problems == []
    r = await c.get("/v1/alerts?limit=1", headers=auth(reg))
    assert everything.events[1] == (await r.json())["events"][0]

    async def cursor_stored() -> bool:
        return bool((await subscriptions(c, reg))[0]["delivered_seq"] == 250)

    await eventually(cursor_stored)  # the cursor is stored just after the receiver's 200
    (s1, s2) = await subscriptions(c, reg)
    assert (s1["attempts"], s1["last_error"]) == (0, None)
    assert s2["types"] == ["altitude_limit"]


async def test_retry_after_500s_then_success(settings: Settings) -> None:
    flaky = Receiver(fail_first=3)
    async with receivers(flaky), running(settings, **FAST_RETRY) as c:
        reg = await token_for(c, "regulator")
        await subscribe(c, reg, flaky.url)
        m = manager_of(c)
        for k in range(5):
            await m.open_or_update(breach("R", f"Z{k}"))
        await flaky.wait_until(lambda r: len(r.seqs) >= 5)
        assert flaky.attempts >= 4 and flaky.seqs == [1, 2, 3, 4, 5]

        async def cursor_stored() -> bool:
            return bool((await subscriptions(c, reg))[0]["delivered_seq"] == 5)

        await eventually(cursor_stored)
        (sub,) = await subscriptions(c, reg)
        assert sub["attempts"] == 0 and sub["last_error"] is None and sub["state"] == "active"
        metrics = c.app[RUNTIME].metrics
        assert metrics.value("lowalt_webhook_deliveries_total", result="error") == 3


async def test_dead_endpoints_do_not_delay_a_healthy_one(settings: Settings) -> None:
    hanging, failing, healthy = Receiver(mode="hang"), Receiver(mode="500"), Receiver()
    async with receivers(hanging, failing, healthy), \
            running(settings, webhook_timeout_s=60.0, **FAST_RETRY) as c:
        reg = await token_for(c, "regulator")
        for url in (hanging.url, refused_url(), failing.url, healthy.url):
            await subscribe(c, reg, url)
        m = manager_of(c)
        for k in range(30):
            await m.open_or_update(breach("H", f"Z{k}"))
        await healthy.wait_until(lambda r: len(r.seqs) >= 30)
        assert healthy.seqs == list(range(1, 31))
        await hanging.wait_until(lambda r: r.in_flight == 1)
        assert hanging.attempts == 1  # healthy got everything while this one still hangs

        async def errors_shown() -> bool:
            subs = await subscriptions(c, reg)
            return (subs[1]["last_error"] is not None and subs[2]["last_error"] == "HTTP 500"
                    and subs[3]["delivered_seq"] == 30)  # stored just after the receiver's 200

        await eventually(errors_shown)
        subs = await subscriptions(c, reg)
        assert "Connect" in subs[1]["last_error"] and subs[1]["state"] == "active"
        assert subs[0]["delivered_seq"] == 0


async def test_dead_letter_after_max_age_then_resume(settings: Settings) -> None:
    failing = Receiver(mode="500")
    async with receivers(failing), \
            running(settings, webhook_max_age_s=0.3, **FAST_RETRY) as c:
        reg = await token_for(c, "regulator")
        sub = await subscribe(c, reg, failing.url)
        await manager_of(c).open_or_update(breach("D", "Z1"))

        async def dead() -> bool:
            return bool((await subscriptions(c, reg))[0]["state"] == "dead_letter")

        await eventually(dead)
        (shown,) = await subscriptions(c, reg)
        assert shown["last_error"] == "HTTP 500" and shown["attempts"] >= 2
        attempts = failing.attempts
        await asyncio.sleep(0.3)
        assert failing.attempts == attempts  # a dead letter is left alone
        failing.mode = "ok"
        r = await c.post(f"/v1/subscriptions/{sub['id']}/resume", headers=auth(reg))
        assert r.status == 200 and (await r.json())["state"] == "active"
        await failing.wait_until(lambda r: r.seqs == [1])


async def test_subscription_api(server: Server) -> None:
    reg, op = await server.token("regulator"), await server.token("operator", "op1")
    c = server.client
    for body, message in [
        ({"url": "ftp://x/y", "secret": "s"}, "url: expected an http"),
        ({"url": "http://x/y", "secret": ""}, "secret"),
        ({"url": "http://x/y", "secret": "s", "types": ["nope"]}, "types: unknown nope"),
        ({"url": "http://x/y", "secret": "s", "types": "geofence_breach"}, "types: expected"),
        ([], "expected an object"),
    ]:
        r = await c.post("/v1/subscriptions", json=body, headers=auth(reg))
        assert r.status == 400 and message in (await r.json())["error"], body
    r = await c.post("/v1/subscriptions", json={"url": "http://x/y", "secret": "s"},
                     headers=auth(op))
    assert r.status == 403
    assert (await c.get("/v1/subscriptions", headers=auth(op))).status == 403
    sub = await subscribe(c, reg, "http://127.0.0.1:9/hook", name="one")
    r = await c.post("/v1/subscriptions", headers=auth(reg),
                     json={"url": "http://x/y", "secret": "s", "name": "one"})
    assert r.status == 409
    r = await c.get(f"/v1/subscriptions/{sub['id']}", headers=auth(reg))
    assert (await r.json())["url"] == "http://127.0.0.1:9/hook"
    assert (await c.delete(f"/v1/subscriptions/{sub['id']}", headers=auth(reg))).status == 204
    assert (await c.delete(f"/v1/subscriptions/{sub['id']}", headers=auth(reg))).status == 404
    assert (await c.get("/v1/subscriptions/x", headers=auth(reg))).status == 404
    assert await subscriptions(c, reg) == []


async def test_deliveries_resume_after_restart_and_config_subscriptions(
    settings: Settings,
) -> None:
    """A receiver down across a restart gets everything afterwards; the config file's
    subscription is upserted by name and keeps its cursor."""
    api_rx, config_rx = Receiver(mode="500"), Receiver()
    async with receivers(api_rx, config_rx):
        config = {"subscriptions": [{"name": "regulator", "url": config_rx.url,
                                     "secret": SECRET, "types": ["geofence_breach"]}]}
        s1 = replace(settings, extra=config, **FAST_RETRY)
        async with running(s1) as c:
            reg = await token_for(c, "regulator")
            await subscribe(c, reg, api_rx.url)
            m = manager_of(c)
            for k in range(10):
                await m.open_or_update(breach("X", f"Z{k}"))
            await config_rx.wait_until(lambda r: len(r.seqs) >= 10)
            await api_rx.wait_until(lambda r: r.attempts >= 2)
            subs = await subscriptions(c, reg)
            assert [(s["name"], s["source"]) for s in subs] == [("regulator", "config"),
                                                                 (None, "api")]
        api_rx.mode = "ok"
        moved = Receiver()
        async with receivers(moved):
            config["subscriptions"][0]["url"] = moved.url
            async with running(replace(settings, extra=config, **FAST_RETRY)) as c:
                reg = await token_for(c, "regulator")
                await api_rx.wait_until(lambda r: len(r.seqs) >= 10)
                m = manager_of(c)
                await m.open_or_update(breach("X", "Z99"))
                await moved.wait_until(lambda r: len(r.seqs) >= 1)
                subs = await subscriptions(c, reg)
                assert subs[0]["id"] == 1 and subs[0]["url"] == moved.url
        assert api_rx.seqs[:10] == list(range(1, 11))
        assert config_rx.seqs == list(range(1, 11)) and moved.seqs == [11]  # not sent again


CHILD = textwrap.dedent("""
    import asyncio, sys
    from aiohttp import web
    from dispatch.alerts import Condition
    from dispatch.service import DISPATCH
    from lowalt.app import create_app
    from lowalt.settings import load_settings

    async def main() -> None:
        app = create_app(load_settings({}, {}, sys.argv[1]), with_gateway=False)
        runner = web.AppRunner(app)
        await runner.setup()
        m = app[DISPATCH].manager
        k = 0
        while True:
            await m.open_or_update(Condition("geofence_breach", f"K{k % 7}", "critical",
                                             float(k), 29.7, 106.6, 100.0, zone=f"Z{k}"))
            k += 1
            if k % 10 == 0:
                await m.flush()
                print(m.committed_seq, flush=True)
            await asyncio.sleep(0.002)

    asyncio.run(main())
""")


async def test_sigkill_between_commit_and_delivery_loses_nothing(
    settings: Settings, tmp_path: Path,
) -> None:
    """A server killed while raising alerts: after a restart the webhook receiver has every
    committed seq (after dedupe by seq) and an SSE client resumes exactly once."""
    rx = Receiver(delay_s=0.01)
    async with receivers(rx):
        config = tmp_path / "lowalt.toml"
        config.write_text(textwrap.dedent(f"""
            database_url = "{settings.database_url}"
            http = "127.0.0.1:0"
            gateway = "127.0.0.1:0"
            webhook_batch_events = 7
            webhook_retry_base_s = 0.05
            [[subscriptions]]
            name = "regulator"
            url = "{rx.url}"
            secret = "{SECRET}"
        """))
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, str(config), cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None and child.stderr is not None
        stderr = asyncio.create_task(child.stderr.read())
        try:
            committed = 0
            while committed < 150 or len(rx.seqs) < 20:
                line = await asyncio.wait_for(child.stdout.readline(), 30)
                assert line, (await stderr).decode()
                committed = int(line)
        finally:
            child.send_signal(signal.SIGKILL)
            await child.wait()
            await stderr
        store = create_store(settings)
        await store.open()
        try:
            last = await alert_store_for(store).max_seq()
        finally:
            await store.close()
        assert last >= committed
        delivered_before = set(rx.seqs)
        assert len(delivered_before) < last  # the kill left deliveries to do
        async with running(load_settings({}, {}, str(config))) as c:
            await rx.wait_until(lambda r: set(r.seqs) >= set(range(1, last + 1)))
            reg = await token_for(c, "regulator")
            resume_at = last - 25
            headers = {**auth(reg), "Last-Event-ID": str(resume_at)}
            async with c.get("/v1/alerts/stream", headers=headers) as resp:
                sse = SseReader(resp)
                seen = []
                for _ in range(25):
                    ev = await sse.event()
                    assert ev is not None
                    seen.append(int(ev["id"]))
                await manager_of(c).open_or_update(breach("after", "restart"))
                ev = await sse.event()
                assert ev is not None and int(ev["id"]) == last + 1
            await rx.wait_until(lambda r: last + 1 in r.seqs)
            assert seen == list(range(resume_at + 1, last + 1))
    assert set(rx.seqs) == set(range(1, last + 2))  # every committed seq, after dedupe
    assert rx.problems == []
    firsts = list(dict.fromkeys(rx.seqs))
    assert firsts == sorted(firsts)  # first deliveries in seq order
