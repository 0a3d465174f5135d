"""Binary websocket messages over an upgraded socket, for one reader thread and many writers.

websocket-client does the handshake (credentials, client certificates, proxies); after it this
takes the socket over. A TLS connection must never be read and written by two threads at once,
so the socket is non-blocking and every read or write holds one lock only for the system call:
the reader waits in `select` without it, and a writer never queues behind a reader.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable

from websocket import ABNF, WebSocket

_WOULD_BLOCK = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError)
_CONTINUATION, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x2, 0x8, 0x9, 0xA


class WebsocketPipe:
    def __init__(self, ws: WebSocket, idle: float = 10, on_idle: Callable[[], None] | None = None) -> None:
        if ws.sock is None:
            raise ConnectionError("the websocket is not connected")
        self.sock: socket.socket = ws.sock
        self.sock.setblocking(False)
        self.idle = idle
        self.on_idle = on_idle
        self._lock = threading.Lock()
        self._buffer = bytearray()
        self._closed = False

    def send(self, payload: bytes, opcode: int = _BINARY) -> None:
        view = memoryview(ABNF.create_frame(payload, opcode).format())
        while view:
            with self._lock:
                if self._closed:
                    raise ConnectionError("the websocket is closed")
                try:
                    sent = self.sock.send(view)
                except _WOULD_BLOCK:
                    sent = 0
            view = view[sent:]
            if view and not sent:
                select.select([], [self.sock], [], 1)

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
                return b""
            elif opcode in (_BINARY, _CONTINUATION):
                message += payload
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
        if not self._fill(header + size):
            return None
        payload = bytes(self._buffer[header : header + size])
        del self._buffer[: header + size]
        return bool(first & 0x80), first & 0x0F, payload

    def _fill(self, size: int) -> bool:
        """Read until `size` bytes are buffered; False if the connection ended first."""
        while len(self._buffer) < size:
            with self._lock:
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
            readable, _, _ = select.select([self.sock], [], [], self.idle)
            if not readable and self.on_idle:
                self.on_idle()
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            self.send(struct.pack(">H", 1000), _CLOSE)
        with self._lock:
            self._closed = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self.sock.close()
