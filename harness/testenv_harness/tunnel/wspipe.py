"""Binary websocket messages over an upgraded socket, for one reader thread and many writers.

websocket-client does the handshake (credentials, client certificates, proxies); after it this
takes the socket over. A TLS connection must never be read and written by two threads at once,
so the socket is non-blocking and every read or write holds one lock (`_io`) only for the system
call: the reader waits in `select` without it, and a writer never queues behind a reader.

Nothing here waits without a bound. A send that the peer accepts no byte of for `send_timeout`
seconds fails and ends the pipe (half a frame went out, so nothing can follow it); `close` never
waits for a writer: it says goodbye only if no frame is half-sent, then shuts the socket down,
which fails a waiting reader at once and a blocked send within _WRITER_NAP.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable

from websocket import ABNF, WebSocket

_WOULD_BLOCK = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError)
_CONTINUATION, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x2, 0x8, 0x9, 0xA
#: Seconds a send may go without the peer taking a byte before the pipe is given up.
SEND_TIMEOUT = 30.0
#: Seconds `close` spends on its CLOSE frame before it cuts the connection anyway.
CLOSE_TIMEOUT = 1.0
#: Longest a blocked writer sleeps before it looks again whether the pipe was closed. Shutting
#: a socket down wakes a reader, and a writer on TCP, but not a writer on every kind of socket.
_WRITER_NAP = 0.2
#: Largest message we assemble. A message carries at most one SPDY frame (16 MiB and 8 bytes)
#: as the API server writes them; a peer announcing more is broken or hostile.
MAX_MESSAGE = 32 * 1024 * 1024


class WebsocketPipe:
    def __init__(
        self,
        ws: WebSocket,
        idle: float = 10,
        on_idle: Callable[[], None] | None = None,
        send_timeout: float = SEND_TIMEOUT,
    ) -> None:
        if ws.sock is None:
            raise ConnectionError("the websocket is not connected")
        self.sock: socket.socket = ws.sock
        self.sock.setblocking(False)
        self.idle = idle
        self.on_idle = on_idle
        self.send_timeout = send_timeout
        self._io = threading.Lock()  # one system call on the socket at a time (TLS)
        self._sending = threading.Lock()  # one frame at a time: two writers never interleave
        self._buffer = bytearray()
        self._closed = False
        self._said_goodbye = False  # a CLOSE frame went out: `close` sends no second one

    # -- writing ----------------------------------------------------------------------------

    def send(self, payload: bytes, opcode: int = _BINARY) -> None:
        """Send one frame; TimeoutError (and the pipe closed) if the peer stops taking bytes."""
        frame = ABNF.create_frame(payload, opcode).format()
        with self._sending:
            self._write(memoryview(frame), self.send_timeout)

    def _write(self, view: memoryview, timeout: float) -> None:
        """Write all of `view`; the clock restarts whenever the peer takes a byte."""
        deadline = time.monotonic() + timeout
        while view:
            with self._io:
                if self._closed:
                    raise ConnectionError("the websocket is closed")
                try:
                    sent = self.sock.send(view)
                except _WOULD_BLOCK:
                    sent = 0
            if sent:
                view = view[sent:]
                deadline = time.monotonic() + timeout
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                # Part of a frame may be out: the byte stream is broken for any later frame.
                self._shut()
                raise TimeoutError(f"the peer took no data for {timeout:g}s")
            self._wait(writable=True, timeout=min(left, _WRITER_NAP))

    def _wait(self, writable: bool, timeout: float) -> bool:
        """select() on the socket; False on timeout. After `_shut` it returns, or raises, at once."""
        try:
            if writable:
                ready = select.select([], [self.sock], [], timeout)[1]
            else:
                ready = select.select([self.sock], [], [], timeout)[0]
        except (OSError, ValueError) as exc:  # closed under us (fileno -1): the next call says so
            raise ConnectionError("the websocket is closed") from exc
        return bool(ready)

    # -- reading ----------------------------------------------------------------------------

    def receive(self) -> bytes:
        """The next binary message; b"" once the server closed the websocket."""
        message = bytearray()
        while True:
            frame = self._frame()
            if frame is None:
                return b""
            fin, opcode, payload = frame
            if opcode == _PING:
                self.send(payload, _PONG)
            elif opcode == _CLOSE:
                with contextlib.suppress(OSError, ConnectionError):
                    self.send(payload[:2], _CLOSE)
                self._said_goodbye = True
                return b""
            elif opcode in (_BINARY, _CONTINUATION):
                if fin and not message:
                    return payload  # the usual case: one frame, no copy
                message += payload
                if len(message) > MAX_MESSAGE:
                    raise ConnectionError(f"a websocket message over {MAX_MESSAGE} bytes")
                if fin:
                    return bytes(message)

    def _frame(self) -> tuple[bool, int, bytes] | None:
        """(fin, opcode, payload) of the next frame the server sent (server frames are unmasked)."""
        if not self._fill(2):
            return None
        first, second = self._buffer[0], self._buffer[1]
        size, header = second & 0x7F, 2
        if size == 126:
            if not self._fill(4):
                return None
            (size,), header = struct.unpack_from(">H", self._buffer, 2), 4
        elif size == 127:
            if not self._fill(10):
                return None
            (size,), header = struct.unpack_from(">Q", self._buffer, 2), 10
        if size > MAX_MESSAGE:  # refuse before buffering it
            raise ConnectionError(f"a websocket frame of {size} bytes (at most {MAX_MESSAGE})")
        if not self._fill(header + size):
            return None
        with memoryview(self._buffer) as view:
            payload = bytes(view[header : header + size])  # one copy, not a slice and a copy
        del self._buffer[: header + size]  # O(1): a bytearray drops its head in place
        return bool(first & 0x80), first & 0x0F, payload

    def _fill(self, size: int) -> bool:
        """Read until `size` bytes are buffered; False if the connection ended first."""
        while len(self._buffer) < size:
            with self._io:
                if self._closed:
                    return False
                try:
                    chunk = self.sock.recv(1 << 18)
                    if not chunk:
                        return False
                    self._buffer += chunk
                    continue
                except _WOULD_BLOCK:
                    pass
            try:
                readable = self._wait(writable=False, timeout=self.idle)
            except ConnectionError:
                return False
            if not readable and self.on_idle:
                self.on_idle()
        return True

    # -- closing ----------------------------------------------------------------------------

    def close(self) -> None:
        """Say goodbye if the socket is free, then shut it down; never waits on a writer."""
        # A writer holding `_sending` may be stuck on a peer that reads nothing: a CLOSE frame
        # would have to wait behind it (and could not be cut into its half-sent frame), so
        # then there is no goodbye, only the shutdown below, which makes that writer fail.
        if not self._said_goodbye and self._sending.acquire(blocking=False):
            self._said_goodbye = True
            try:
                frame = ABNF.create_frame(struct.pack(">H", 1000), _CLOSE).format()
                with contextlib.suppress(OSError, ConnectionError):
                    self._write(memoryview(frame), CLOSE_TIMEOUT)
            finally:
                self._sending.release()
        self._shut()

    def _shut(self) -> None:
        """Shut the socket down and close it, under `_io` so no TLS call is half-way through."""
        with self._io:
            if self._closed:
                return
            self._closed = True
            # The raw shutdown, not SSLSocket's: it makes every other thread's select return
            # and its next call fail, without touching the TLS state.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self.sock.close()
