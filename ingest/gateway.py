"""The gateway stream (API.md section 2.2): length-prefixed MessagePack over TCP.

    frame  = length:uint32 big-endian | payload: `length` bytes of MessagePack
    first  client -> {"hello": 1, "token": str, "name": str}   server -> {"ok": true} | error+close
    then   client -> {"seq": n, "obs": [...]}                   server -> {"ack": n, ...} in order

`data_received` only cuts frames; a per-connection task processes them in order (the hello needs
a token lookup). Backpressure is by `pause_reading`: the socket stops being read while this
connection has more than `conn_max_inflight_obs` observations awaiting commit, or the pipeline
is full, or too many cut frames wait to be processed, or the token's rate limit (observations
per second) makes the next frame wait: a limited sender is slowed, never cut off or dropped.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Coroutine
from typing import Any, cast

import msgpack

from ingest.frames import FrameSession, IngestContext, OrderedReplies, Reply, frame_items
from lowalt import access
from lowalt.auth import Authenticator
from lowalt.errors import AuthError, StorageUnavailable

log = logging.getLogger("lowalt.gateway")
_LEN = struct.Struct(">I")
MAX_WAITING_FRAMES = 64
LINGER_S = 2.0  # after our last frame, how long to wait for the peer to close


def encode_frame(payload: Any) -> bytes:
    body: bytes = msgpack.packb(payload, use_bin_type=True)
    return _LEN.pack(len(body)) + body


def decode_payload(body: bytes) -> Any:
    """MessagePack bytes to a Python value; ValueError with a reason when they are not."""
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ValueError(f"not valid MessagePack: {type(exc).__name__}: {exc}") from None


class GatewayProtocol(asyncio.Protocol):
    def __init__(
        self, ctx: IngestContext, auth: Authenticator, *, max_frame_bytes: int,
        conn_max_inflight_obs: int, handshake_timeout_s: float, idle_timeout_s: float,
        connections: set[GatewayProtocol] | None = None,
    ) -> None:
        self.ctx, self.auth = ctx, auth
        self.max_frame_bytes = max_frame_bytes
        self.conn_max_inflight_obs = conn_max_inflight_obs
        self.handshake_timeout_s = handshake_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.connections = connections
        self.transport: asyncio.Transport | None = None
        self.session: FrameSession | None = None
        self.replies: OrderedReplies | None = None
        self._buffer = bytearray()
        self._frames: deque[bytes] = deque()
        self._wakeup = asyncio.Event()
        self._paused = False
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Future[None]] = set()
        self._frames_empty = asyncio.Event()
        self._frames_empty.set()
        # Set when the peer sent an oversize length: answered after the frames cut before it.
        self._input_error: str | None = None
        self._eof = False  # the peer has sent everything it will send
        self._peer_done = asyncio.Event()  # set on the peer's FIN or on connection loss
        self._rate_wait = False  # the next frame waits for the token's rate limit
        self._counted: int | None = None  # the token id this connection is counted against

    # -- asyncio.Protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if self.connections is not None:
            self.connections.add(self)
        self.replies = OrderedReplies(self._write)
        self._task = asyncio.create_task(self._process(), name="lowalt-gateway-conn")
        self._arm_timer(self.handshake_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        if self._counted is not None:
            self.ctx.limits.connections.release(self._counted, self._fatal)
            self._counted = None
        if self.session is not None:
            self.session.close()
        self._peer_done.set()
        if self.connections is not None:
            self.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
        if self.replies is not None:
            self._spawn(self.replies.close(flush=False))

    def data_received(self, data: bytes) -> None:
        if self._closing or self._input_error is not None:
            return
        self._arm_timer(self.idle_timeout_s if self.session else self.handshake_timeout_s)
        buf = self._buffer
        buf += data
        while len(buf) >= 4:
            (length,) = _LEN.unpack_from(buf)
            if length > self.max_frame_bytes:
                self._input_error = (
                    f"frame of {length} bytes exceeds max_frame ({self.max_frame_bytes})"
                )
                buf.clear()
                self._wakeup.set()
                break
            if len(buf) < 4 + length:
                break
            self._frames.append(bytes(buf[4 : 4 + length]))
            del buf[: 4 + length]
        if self._frames:
            self._frames_empty.clear()
            self._wakeup.set()
        self._update_flow()

    def eof_received(self) -> bool:
        """The peer half-closed: answer the frames it sent, then close (keep the socket open)."""
        self._eof = True
        self._peer_done.set()
        self._wakeup.set()
        return True

    def pause_writing(self) -> None:  # the peer is not reading our acks: stop reading its frames
        self._paused_for_write = True
        self._update_flow()

    def resume_writing(self) -> None:
        self._paused_for_write = False
        self._update_flow()

    _paused_for_write = False

    # -- internals -------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _arm_timer(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(seconds, self._on_timeout)

    def _on_timeout(self) -> None:
        if self.session is None:
            self._fatal("no hello within the handshake timeout")
        elif (self.replies is not None and self.replies.inflight == 0 and not self._frames
              and not self._rate_wait):
            self._fatal("idle timeout")
        else:
            self._arm_timer(self.idle_timeout_s)

    def _update_flow(self) -> None:
        if self.transport is None or self._closing:
            return
        inflight = self.session.inflight_obs if self.session else 0
        busy = (
            len(self._frames) >= MAX_WAITING_FRAMES
            or inflight >= self.conn_max_inflight_obs
            or not self.ctx.pipeline.has_room()
            or self._paused_for_write
            or self._input_error is not None
            or self._rate_wait
        )
        if busy and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        elif not busy and self._paused:
            self._paused = False
            self.transport.resume_reading()

    def _write(self, reply: Reply) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_frame(reply))

    def _fatal(self, reason: str, *, hello: bool = False) -> None:
        """Send an error frame and close (after the answers already owed)."""
        if self._closing:
            return
        self._closing = True
        if self.replies is not None:
            self.replies.push({"ok": False, "error": reason} if hello else {"error": reason})
        self._spawn(self._close_after_replies())

    async def _close_after_replies(self) -> None:
        """Write every answer owed, then close without losing them.

        Closing a socket with unread input makes the kernel reset the connection and drop what
        we wrote but the peer has not yet read. So: send FIN after the answers, read (and
        discard) until the peer closes or LINGER_S passes, then close.
        """
        if self.replies is not None:
            await self.replies.close(flush=True)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            if not self._eof and transport.can_write_eof():
                transport.write_eof()
                transport.resume_reading()  # data_received discards: we are closing
                await asyncio.wait_for(self._peer_done.wait(), LINGER_S)
        except TimeoutError:
            pass
        finally:
            transport.close()

    async def _hello(self, body: bytes) -> bool:
        try:
            payload = decode_payload(body)
        except ValueError as exc:
            self._fatal(str(exc), hello=True)
            return False
        if not isinstance(payload, dict) or payload.get("hello") != 1:
            self._fatal('first frame must be {"hello": 1, "token": ..., "name": ...}', hello=True)
            return False
        token, name = payload.get("token"), payload.get("name", "gateway")
        if not isinstance(token, str) or not isinstance(name, str) or not name:
            self._fatal("hello: token and name must be strings", hello=True)
            return False
        try:
            principal = await self.auth.principal(token)
        except AuthError as exc:
            self._fatal(exc.reason, hello=True)
            return False
        except StorageUnavailable:
            self._fatal("storage unavailable, try again later", hello=True)
            return False
        if not access.SEND_TELEMETRY.allows(principal.role):
            self._fatal(f"role {principal.role!r} may not send telemetry", hello=True)
            return False
        # Counted against the token; revoking the token ends the session with _fatal.
        if not self.ctx.limits.connections.acquire(principal.token_id, self._fatal):
            self._fatal(self.ctx.limits.connections.refusal(), hello=True)
            return False
        self._counted = principal.token_id
        self.session = FrameSession(self.ctx, principal, f"{name[:64]}/gateway")
        self.session.on_settled = self._update_flow
        self.session.replies = self.replies
        assert self.replies is not None
        self.replies.push({"ok": True})
        self._arm_timer(self.idle_timeout_s)
        return True

    async def _process(self) -> None:
        while True:
            while not self._frames:
                self._frames_empty.set()
                if self._input_error is not None:  # after answering every frame before it
                    self._fatal(self._input_error, hello=self.session is None)
                    return
                if self._eof and not self._closing:
                    self._closing = True
                    self._spawn(self._close_after_replies())
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            body = self._frames.popleft()
            if self.session is None:
                if not await self._hello(body):
                    return
                continue
            while not self.ctx.pipeline.has_room():
                await self.ctx.pipeline.wait_for_room()
            try:
                payload = decode_payload(body)
            except ValueError as exc:
                self.session.frames += 1
                reply: Reply = {"error": str(exc), "frame": self.session.frames}
                assert self.replies is not None
                self.replies.push(reply)
                continue
            await self._take_rate(frame_items(payload))
            try:
                answer = self.session.handle(payload)
            except StorageUnavailable as exc:  # shutting down
                answer = {"error": str(exc), "frame": self.session.frames}
            assert self.replies is not None
            self.replies.push(answer)
            self._update_flow()
            if self._frames:  # a frame per loop turn: other connections' frames go in between
                await asyncio.sleep(0)

    async def _take_rate(self, n: int) -> None:
        """Wait, with the socket not read, until the token's bucket holds n observations."""
        assert self.session is not None
        token_id = self.session.principal.token_id
        while not self._closing and (wait_s := self.ctx.limits.rates.take(token_id, n)) > 0:
            if not self._rate_wait:
                self._rate_wait = True
                self._update_flow()
            await asyncio.sleep(wait_s)
        if self._rate_wait:
            self._rate_wait = False
            self._update_flow()

    async def stop_reading(self) -> None:
        """Shutdown, step 1: read no more; hand the frames already received to the pipeline."""
        self._closing = True  # no more reads or flow changes
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        if self.session is not None and self._task is not None and not self._task.done():
            await self._frames_empty.wait()

    async def finish(self) -> None:
        """Shutdown, step 2 (after the pipeline drained): write every ack owed, then close."""
        await self._close_after_replies()
