"""The API server's side of a port-forward session, for unit tests: SPDY frames read from and
written to a plain socket, and the upgraded socket WebsocketPipe takes from websocket-client."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import zlib
from collections.abc import Iterator

import pytest

from testenv_harness.tunnel import spdy


class FakeWebsocket:
    """What WebsocketPipe takes from websocket-client: the upgraded socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


class Peer:
    """The server's side: reads our frames (decompressing headers) and writes its own."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)
        self.buffer = b""

    def frame(self) -> tuple[bool, int, int, bytes]:
        """(control, type or stream id, flags, payload) of the next frame we sent."""
        while len(self.buffer) < 8 or len(self.buffer) < 8 + (self._length() & 0xFFFFFF):
            chunk = self.sock.recv(1 << 20)
            assert chunk, "the session closed its transport"
            self.buffer += chunk
        first, flags_length = struct.unpack_from(">II", self.buffer)
        end = 8 + (flags_length & 0xFFFFFF)
        payload, self.buffer = self.buffer[8:end], self.buffer[end:]
        control = bool(first & 0x80000000)
        return control, (first & 0xFFFF) if control else first, flags_length >> 24, payload

    def _length(self) -> int:
        (flags_length,) = struct.unpack_from(">I", self.buffer, 4)
        return int(flags_length)

    def syn_stream(self) -> tuple[int, dict[str, str]]:
        control, kind, _, payload = self.frame()
        assert (control, kind) == (True, spdy.SYN_STREAM)
        (stream_id,) = struct.unpack_from(">I", payload)
        return stream_id, spdy.decode_headers(self.inflate.decompress(payload[10:]))

    def until(self, control: bool, kind: int, timeout: float) -> tuple[bool, int, int, bytes]:
        """Skip frames until one of `kind`; fails after `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                frame = self.frame()
                if frame[:2] == (control, kind):
                    return frame
        except TimeoutError:
            pytest.fail(f"no {'control' if control else 'data'} frame {kind} within {timeout}s")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def sends_no_data(self, within: float = 0.3) -> None:
        """Fails if a DATA frame with bytes comes from the session within `within` seconds."""
        self.sock.settimeout(within)
        with contextlib.suppress(TimeoutError):
            while True:
                control, _, _, payload = self.frame()
                assert control or not payload, f"bytes sent on a refused stream: {payload!r}"


@pytest.fixture
def plain() -> Iterator[tuple[spdy.Session, Peer]]:
    """A session over a socketpair (no websocket), its reader running."""
    ours, theirs = socket.socketpair()
    session = spdy.Session(ours.sendall, lambda: ours.recv(65536), "test/pod")
    session.on_close = lambda: shut(ours)
    thread = threading.Thread(target=session.run, daemon=True)
    thread.start()
    yield session, Peer(theirs)
    end_session(session)
    theirs.close()
    thread.join(2)


def end_session(session: spdy.Session) -> None:
    """Close a test's session without ever hanging the run (the test itself checks the bound)."""
    threading.Thread(target=session.close, args=("test over",), daemon=True).start()


def shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
