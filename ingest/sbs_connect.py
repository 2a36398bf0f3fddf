"""Connector: a live SBS-1 feed (TCP port 30003, as dump1090/readsb serve it) into lowalt's
gateway stream (`lowalt sbs-connect`).

    feed  -> "\\r\\n"-terminated MSG lines, read in chunks, partial lines kept until complete
          -> batches sealed every `flush_s` or at `max_lines` lines, numbered by seq
          -> gateway frames {"seq": n, "sbs": "<lines>"}, answered {"ack": n, ...} in order

A sealed batch stays in `unacked` until lowalt acks it. At most `window` batches are unacked:
past that the feed is not read (TCP backpressure on the feed; a live feed may then drop us and
is reconnected). Each side reconnects on its own after a drop, waiting `backoff_s`. When the
gateway side drops, every unacked batch is sent again on the next connection: nothing read is
lost, and a batch sent twice is harmless since the store drops repeated (uav, t).

The server's SBS state (MSG types merged per aircraft) is per gateway connection, so after a
gateway reconnect a position line is decoded only once that aircraft's altitude is heard again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from ingest.client import GatewayClient

__all__ = ["Counters", "SbsConnector", "backoff_s"]

log = logging.getLogger("lowalt.sbs_connect")
MAX_LINE_BYTES = 1024  # a longer "line" is not SBS: dropped and counted
READ_BYTES = 16 * 1024
CONNECT_TIMEOUT_S = 10.0


def backoff_s(attempt: int, base_s: float = 0.5, cap_s: float = 30.0,
              rand: Callable[[], float] = random.random) -> float:
    """Delay before reconnect `attempt` (0 after a drop): d = min(cap, base * 2^attempt), then
    a random point of [d/2, d] (jitter keeps many connectors from reconnecting in step), never
    below base."""
    delay = min(cap_s, base_s * 2.0 ** min(attempt, 32))
    return max(base_s, delay * (0.5 + 0.5 * rand()))


@dataclass
class Counters:
    feed_connects: int = 0
    feed_drops: int = 0  # failed connects and lost connections
    gateway_connects: int = 0
    gateway_drops: int = 0
    lines_read: int = 0
    lines_dropped: int = 0  # longer than MAX_LINE_BYTES
    frames_sent: int = 0
    frames_resent: int = 0  # sent again after a gateway reconnect
    frames_acked: int = 0
    frames_refused: int = 0  # answered with an error: not sent again
    accepted: int = 0  # observations, as lowalt's acks count them
    duplicates: int = 0
    rejected: int = 0  # lines


class SbsConnector:
    def __init__(
        self, feed: tuple[str, int], gateway: tuple[str, int], token: str, *,
        name: str = "sbs", flush_s: float = 0.2, max_lines: int = 500, window: int = 32,
        backoff_base_s: float = 0.5, backoff_cap_s: float = 30.0, drain_s: float = 2.0,
    ) -> None:
        self.feed, self.gateway, self.token, self.name = feed, gateway, token, name
        self.flush_s, self.max_lines, self.window = flush_s, max_lines, window
        self.backoff_base_s, self.backoff_cap_s, self.drain_s = (
            backoff_base_s, backoff_cap_s, drain_s)
        self.counters = Counters()
        self.unacked: dict[int, str] = {}  # seq -> batch text, oldest first
        self.seq = 0
        self._lines: list[str] = []  # the batch being filled
        self._sealed = asyncio.Event()  # a batch joined `unacked`
        self._room = asyncio.Event()  # `unacked` went below `window`
        self._ever_sent = 0  # highest seq ever sent (to count re-sends)
        self.gateway_up = False

    async def run(self, stop: asyncio.Event) -> None:
        """Run until stop is set; then seal the last batch and wait up to drain_s for its ack."""
        gateway = asyncio.create_task(self._gateway_loop(), name="sbs-connect-gateway")
        readers = [asyncio.create_task(self._feed_loop(), name="sbs-connect-feed"),
                   asyncio.create_task(self._flush_loop(), name="sbs-connect-flush")]
        try:
            await stop.wait()
            await _cancel(readers)
            self.seal()
            if self.gateway_up:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._until_acked(), self.drain_s)
        finally:
            await _cancel([*readers, gateway])

    def add_lines(self, lines: list[str]) -> None:
        """File complete lines into the current batch, sealing it when full."""
        for line in lines:
            self._lines.append(line)
            if len(self._lines) >= self.max_lines:
                self.seal()

    def seal(self) -> None:
        """Close the current batch (if any) into `unacked` under the next seq."""
        if not self._lines:
            return
        self.seq += 1
        self.unacked[self.seq] = "\r\n".join(self._lines) + "\r\n"
        self._lines = []
        self._sealed.set()

    def answered(self, frame: dict[str, object]) -> None:
        """Take lowalt's answer to a frame: its batch leaves `unacked`."""
        seq = frame.get("ack", frame.get("seq"))
        if not isinstance(seq, int) or self.unacked.pop(seq, None) is None:
            return
        if "ack" in frame:
            self.counters.frames_acked += 1
            self.counters.accepted += _int(frame.get("accepted"))
            self.counters.duplicates += _int(frame.get("duplicates"))
            rejected = frame.get("rejected")
            self.counters.rejected += len(rejected) if isinstance(rejected, list) else 0
        else:
            self.counters.frames_refused += 1
            log.warning("lowalt refused batch %d: %s", seq, frame.get("error"))
        if len(self.unacked) < self.window:
            self._room.set()

    # -- the feed side -------------------------------------------------------------------------

    async def _feed_loop(self) -> None:
        attempt = 0
        host, port = self.feed
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port), CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError) as exc:
                reason = f"cannot connect: {exc}"
            else:
                self.counters.feed_connects += 1
                log.info("feed %s:%d connected", host, port)
                try:
                    if await self._read_feed(reader):
                        attempt = 0
                    reason = "closed by the feed"
                except OSError as exc:
                    reason = f"lost: {exc}"
                finally:
                    writer.close()
            self.counters.feed_drops += 1
            delay = backoff_s(attempt, self.backoff_base_s, self.backoff_cap_s)
            attempt += 1
            log.warning("feed %s:%d %s; reconnecting in %.1f s", host, port, reason, delay)
            await asyncio.sleep(delay)

    async def _read_feed(self, reader: asyncio.StreamReader) -> bool:
        """Read lines until EOF; True if any line came. A partial last line is dropped."""
        tail = b""
        got_any = False
        while True:
            while len(self.unacked) >= self.window:
                self._room.clear()
                await self._room.wait()
            chunk = await reader.read(READ_BYTES)
            if not chunk:
                return got_any
            parts = (tail + chunk).split(b"\n")
            tail = parts.pop()
            if len(tail) > MAX_LINE_BYTES:
                tail = b""
                self.counters.lines_dropped += 1
            lines = []
            for raw in parts:
                if len(raw) > MAX_LINE_BYTES:
                    self.counters.lines_dropped += 1
                    continue
                line = raw.rstrip(b"\r").decode("ascii", "replace")
                if line:
                    lines.append(line)
            if lines:
                got_any = True
                self.counters.lines_read += len(lines)
                self.add_lines(lines)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            self.seal()

    # -- the gateway side ----------------------------------------------------------------------

    async def _gateway_loop(self) -> None:
        attempt = 0
        host, port = self.gateway
        while True:
            try:
                client = await asyncio.wait_for(
                    GatewayClient.connect(host, port, self.token, self.name), CONNECT_TIMEOUT_S)
            except (OSError, EOFError, TimeoutError, ValueError) as exc:  # ValueError: msgpack
                reason = f"cannot connect: {exc}"
            else:
                self.counters.gateway_connects += 1
                self.gateway_up = True
                attempt = 0
                log.info("gateway %s:%d connected, %d batches to send", host, port,
                         len(self.unacked))
                try:
                    reason = await self._exchange(client)
                finally:
                    self.gateway_up = False
                    await client.close()
            self.counters.gateway_drops += 1
            delay = backoff_s(attempt, self.backoff_base_s, self.backoff_cap_s)
            attempt += 1
            log.warning("gateway %s:%d %s; reconnecting in %.1f s (%d batches unacked)",
                        host, port, reason, delay, len(self.unacked))
            await asyncio.sleep(delay)

    async def _exchange(self, client: GatewayClient) -> str:
        """Send every unacked batch, then each new one, while reading answers; return why the
        connection ended."""
        sender = asyncio.create_task(self._send(client))
        receiver = asyncio.create_task(self._receive(client))
        done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        await _cancel([sender, receiver])
        exc = next(iter(done)).exception()
        return f"lost: {exc}" if exc is not None else "closed"

    async def _send(self, client: GatewayClient) -> None:
        sent = 0  # highest seq sent on this connection
        while True:
            for seq, text in list(self.unacked.items()):
                if seq <= sent:
                    continue
                client.send({"seq": seq, "sbs": text})
                sent = seq
                self.counters.frames_sent += 1
                if seq <= self._ever_sent:
                    self.counters.frames_resent += 1
                self._ever_sent = max(self._ever_sent, seq)
            await client.drain()
            self._sealed.clear()
            if not self.unacked or max(self.unacked) <= sent:
                await self._sealed.wait()

    async def _receive(self, client: GatewayClient) -> None:
        while True:
            frame = await client.recv_ack()
            if "ack" not in frame and "seq" not in frame:  # about the connection: it closes
                raise ConnectionError(f"gateway error: {frame.get('error')}")
            self.answered(frame)

    async def _until_acked(self) -> None:
        while self.unacked:
            self._room.clear()
            await self._room.wait()


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
