"""A small gateway-stream client: used by the simulator, the benchmarks and the tests."""

from __future__ import annotations

import asyncio
import struct
from ssl import SSLContext
from typing import Any

import msgpack

_LEN = struct.Struct(">I")


class GatewayClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.seq = 0

    @classmethod
    async def connect(cls, host: str, port: int, token: str, name: str = "gateway",
                      *, hello: bool = True, ssl: SSLContext | None = None) -> GatewayClient:
        """Connect and say hello; `ssl` for a gateway port with TLS (tls_cert_file set)."""
        reader, writer = await asyncio.open_connection(host, port, ssl=ssl)
        client = cls(reader, writer)
        if hello:
            client.send({"hello": 1, "token": token, "name": name})
            answer = await client.recv()
            if not answer.get("ok"):
                writer.close()
                raise ConnectionError(f"gateway refused hello: {answer.get('error')}")
        return client

    def send_raw(self, body: bytes) -> None:
        self.writer.write(_LEN.pack(len(body)) + body)

    def send(self, payload: Any) -> None:
        self.send_raw(msgpack.packb(payload, use_bin_type=True))

    def send_obs(self, obs: list[Any], **extra: Any) -> int:
        """Send one data frame; return its seq."""
        self.seq += 1
        self.send({"seq": self.seq, "obs": obs, **extra})
        return self.seq

    async def recv(self) -> dict[str, Any]:
        """The next frame from the server (skipping none); EOFError when the server closed."""
        try:
            header = await self.reader.readexactly(4)
            body = await self.reader.readexactly(_LEN.unpack(header)[0])
        except asyncio.IncompleteReadError as exc:
            raise EOFError("gateway closed the connection") from exc
        frame: dict[str, Any] = msgpack.unpackb(body, raw=False, strict_map_key=False)
        return frame

    async def recv_ack(self) -> dict[str, Any]:
        """The next ack or error frame, skipping pushed frames (clearances, ...)."""
        while True:
            frame = await self.recv()
            if "ack" in frame or "error" in frame:
                return frame

    async def drain(self) -> None:
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
