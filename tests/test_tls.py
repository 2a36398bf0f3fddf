"""Optional TLS on both listeners, with a self-signed certificate made by the test (openssl)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ingest.client import GatewayClient
from ingest.gateway import encode_frame
from lowalt.app import RUNTIME, Runtime, create_app, start_http
from lowalt.errors import ConfigError
from lowalt.settings import Settings, replace
from tests.conftest import make_token

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-days", "1", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


@pytest.fixture
async def tls_server(
    settings: Settings, certificate: tuple[Path, Path]
) -> AsyncIterator[tuple[int, Runtime]]:
    """The server as `lowalt serve` starts it, with tls_cert_file / tls_key_file set."""
    cert, key = certificate
    s = replace(settings, tls_cert_file=str(cert), tls_key_file=str(key))
    app = create_app(s)
    runner = await start_http(app, s)
    try:
        yield runner.addresses[0][1], app[RUNTIME]
    finally:
        await runner.cleanup()


def client_context(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


async def test_https_request(tls_server: tuple[int, Runtime],
                             certificate: tuple[Path, Path]) -> None:
    port, rt = tls_server
    token = await make_token(rt.store, "gateway")
    obs = {"uav": "TLS-1", "t": time.time() - 1, "lat": 29.7, "lon": 106.6, "alt_m": 90.0}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"https://127.0.0.1:{port}/v1/telemetry", json=obs,
                                headers={"Authorization": f"Bearer {token}"},
                                ssl=client_context(certificate[0])) as r:
            assert r.status == 200 and (await r.json())["accepted"] == 1
        with pytest.raises(aiohttp.ClientError):  # plain HTTP to the TLS port
            async with session.get(f"http://127.0.0.1:{port}/healthz") as r:
                await r.read()


async def test_tls_gateway_hello_and_ack(tls_server: tuple[int, Runtime],
                                         certificate: tuple[Path, Path]) -> None:
    _, rt = tls_server
    token = await make_token(rt.store, "gateway")
    client = await GatewayClient.connect("127.0.0.1", rt.gateway_port, token, "secure",
                                         ssl=client_context(certificate[0]))
    try:
        seq = client.send_obs([["TLS-G", time.time() - 1, 29.7, 106.6, 90.0]])
        assert await client.recv() == {"ack": seq, "accepted": 1, "duplicates": 0,
                                       "rejected": []}
    finally:
        await client.close()
    assert len(await rt.store.track("TLS-G", 0, time.time(), 10)) == 1


async def test_plain_tcp_to_the_tls_gateway_fails(tls_server: tuple[int, Runtime]) -> None:
    _, rt = tls_server
    token = await make_token(rt.store, "gateway")
    reader, writer = await asyncio.open_connection("127.0.0.1", rt.gateway_port)
    writer.write(encode_frame({"hello": 1, "token": token, "name": "plain"}))
    try:
        async with asyncio.timeout(10):
            answer = await reader.read()
    except ConnectionResetError:
        answer = b""
    writer.close()
    assert b"ok" not in answer  # no hello answer: at most a TLS alert, then the close


@pytest.mark.parametrize(("changes", "message"), [
    ({"tls_cert_file": "CERT"}, "set both or neither"),
    ({"tls_cert_file": "/nonexistent.pem", "tls_key_file": "KEY"}, "file not found"),
    ({"tls_cert_file": "KEY", "tls_key_file": "KEY"}, "cannot load"),
])
def test_bad_tls_settings_stop_the_start(
    settings: Settings, certificate: tuple[Path, Path], changes: dict[str, Any], message: str
) -> None:
    cert, key = certificate
    paths = {"CERT": str(cert), "KEY": str(key)}
    values = {k: paths.get(v, v) for k, v in changes.items()}
    with pytest.raises(ConfigError, match=message):
        replace(settings, **values)
