"""A SPDY/3.1 client session, as Kubernetes speaks it for port-forward, carried by any byte pipe.

`kubectl port-forward` keeps one SPDY connection per pod and opens a pair of streams (error,
data) per TCP connection, so a new connection costs one round trip instead of a TLS handshake
and an HTTP upgrade. Since Kubernetes 1.31 the API server accepts that SPDY session tunnelled
through a websocket (subprotocol `SPDY/3.1+portforward.k8s.io`, KEP-4006): the websocket's
binary messages carry the SPDY byte stream unchanged.

Only what port-forward uses is implemented: SYN_STREAM/SYN_REPLY with zlib-compressed header
blocks, DATA with FIN, RST_STREAM, PING, GOAWAY. Flow control frames are ignored, as the
server's implementation (moby/spdystream) ignores them too: a session's one push-back is its
TCP connection, so a stream's receiver must never block the reader for long (see `SpdyTunnel`
in portforward.py).

What the server sends is bounded: a header block inflates to at most MAX_HEADER_BLOCK bytes
(a few compressed kilobytes can otherwise inflate to gigabytes) and a frame is at most 16 MiB
by its format; frames are cut out of the received bytes by offset, never by copying the rest.
"""

from __future__ import annotations

import logging
import struct
import threading
import zlib
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE = 1, 2, 3, 4, 6, 7, 8, 9
FLAG_FIN = 0x01
RST_CANCEL, RST_REFUSED = 5, 3
#: Largest DATA payload we send in one frame (the format allows 16 MiB).
MAX_DATA = 256 * 1024
#: Largest inflated header block we accept; Kubernetes sends a few dozen bytes.
MAX_HEADER_BLOCK = 64 * 1024
GOAWAY_PROTOCOL_ERROR = 1

# The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1): 65
# length-prefixed words, then a run of common header values.
_WORDS = (
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
)
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 "
    "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,"
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age="
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0."
)
DICTIONARY = b"".join(struct.pack(">I", len(w)) + w.encode() for w in _WORDS) + _TAIL.encode()


class SessionClosedError(ConnectionError):
    """The SPDY session is gone (the pod, the kubelet or the API server closed it)."""


class ProtocolError(ValueError):
    """The server sent something this session cannot go on from."""


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """A SPDY/3 header block before compression: count, then length-prefixed names and values."""
    parts = [struct.pack(">I", len(headers))]
    for name, value in headers.items():
        for text in (name.lower(), value):
            raw = text.encode()
            parts.append(struct.pack(">I", len(raw)) + raw)
    return b"".join(parts)


def decode_headers(block: bytes) -> dict[str, str]:
    (count,), offset, headers = struct.unpack_from(">I", block), 4, {}
    for _ in range(count):
        texts = []
        for _ in range(2):
            (size,) = struct.unpack_from(">I", block, offset)
            texts.append(block[offset + 4 : offset + 4 + size].decode())
            offset += 4 + size
        headers[texts[0]] = texts[1]
    return headers


def control_frame(kind: int, payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">HHI", 0x8000 | VERSION, kind, flags << 24 | len(payload)) + payload


def data_frame(stream_id: int, data: bytes, flags: int = 0) -> bytes:
    return struct.pack(">II", stream_id, flags << 24 | len(data)) + data


class Stream:
    """One SPDY stream; `on_data(payload)` gets its bytes, `on_end(reason)` fires once."""

    def __init__(
        self,
        session: Session,
        stream_id: int,
        on_data: Callable[[bytes], None],
        on_end: Callable[[str], None],
    ) -> None:
        self.session = session
        self.id = stream_id
        self.on_data = on_data
        self._on_end = on_end
        self._ended = False
        #: This side has half-closed the stream: it sends nothing more (the peer still may).
        self.finished = False

    def send(self, data: bytes) -> None:
        for start in range(0, len(data), MAX_DATA):
            self.session.write(data_frame(self.id, data[start : start + MAX_DATA]))

    def finish(self) -> None:
        """Half-close: this side sends nothing more."""
        self.finished = True
        self.session.write(data_frame(self.id, b"", FLAG_FIN))

    def reset(self) -> None:
        """Abandon the stream (what kubectl does once either side is done)."""
        if self.session.forget(self.id):
            self.session.write(control_frame(RST_STREAM, struct.pack(">II", self.id, RST_CANCEL)), quiet=True)
        self.ended("reset")

    def ended(self, reason: str) -> None:
        if not self._ended:
            self._ended = True
            self._on_end(reason)


class Session:
    """A client SPDY session over `send(bytes)` / `receive() -> bytes` (one message per call).

    A reader thread (`run`, started by the owner) parses frames and dispatches them; any thread
    may open streams and write. Header blocks share one zlib context per direction, so frames
    are compressed and written under one lock (`_writing`), in order.

    That lock may be held for as long as the transport's send blocks (a peer that stops
    reading), so nothing that ends things takes it: the streams and the closed state have a
    lock of their own (`_state`), held only for a dictionary operation. `forget` and `close`
    therefore never wait for a write, and `ping` skips its beat when a write is under way (the
    connection is not idle then). Closing calls `on_close`, which must abort a blocked send
    (the websocket pipe's close shuts its socket down).
    """

    def __init__(self, send: Callable[[bytes], None], receive: Callable[[], bytes], name: str) -> None:
        self._send = send
        self._receive = receive
        self.name = name
        self._writing = threading.Lock()
        self._state = threading.Lock()
        self._compress = zlib.compressobj(zlib.Z_BEST_COMPRESSION, zlib.DEFLATED, 15, 9, zdict=DICTIONARY)
        self._decompress = zlib.decompressobj(zdict=DICTIONARY)
        self._streams: dict[int, Stream] = {}
        self._next_id = 1
        self._next_ping = 1
        self.closed = threading.Event()
        self.reason = ""
        #: True while the reader waits for a stream's consumer to make room (a slow client):
        #: every stream on the session waits with it, so its owner sends new streams elsewhere.
        self.held = False
        #: Streams whose consumer has bytes waiting for it (a client slower than its server): the
        #: reader may soon wait for one, so a new stream goes elsewhere if it can.
        self.behind: set[int] = set()
        #: Called once the session is closed, e.g. to close the transport.
        self.on_close: Callable[[], None] | None = None

    # -- writing ----------------------------------------------------------------------------

    def write(self, frames: bytes, quiet: bool = False) -> None:
        with self._writing:
            self._write_locked(frames, quiet)

    def _write_locked(self, frames: bytes, quiet: bool = False) -> None:
        if self.closed.is_set():
            if quiet:
                return
            raise SessionClosedError(f"{self.name}: {self.reason}")
        try:
            self._send(frames)
        except Exception as exc:  # any transport failure ends the session for every stream
            self.close(f"write failed: {exc}")  # takes `_state` only: no self-deadlock
            if not quiet:
                raise SessionClosedError(f"{self.name}: {exc}") from exc

    def open(
        self,
        headers: list[Mapping[str, str]],
        handlers: list[tuple[Callable[[bytes], None], Callable[[str], None]]],
        fin: list[bool],
    ) -> list[Stream]:
        """Open streams in one write (no waiting for the replies: data may follow at once)."""
        with self._writing:
            frames, streams = [], []
            for block, (on_data, on_end), half_closed in zip(headers, handlers, fin, strict=True):
                stream = Stream(self, self._next_id, on_data, on_end)
                self._next_id += 2  # client streams are odd
                streams.append(stream)
                compressed = self._compress.compress(encode_headers(block))
                compressed += self._compress.flush(zlib.Z_SYNC_FLUSH)
                frames.append(control_frame(SYN_STREAM, struct.pack(">IIH", stream.id, 0, 0) + compressed))
                if half_closed:
                    stream.finished = True
                    frames.append(data_frame(stream.id, b"", FLAG_FIN))
            with self._state:  # known before the replies can arrive, unless closing took them all
                if self.closed.is_set():
                    raise SessionClosedError(f"{self.name}: {self.reason}")
                self._streams.update((stream.id, stream) for stream in streams)
            self._write_locked(b"".join(frames))
        return streams

    def ping(self) -> None:
        """A keep-alive beat; skipped while a write holds the connection (it is not idle then)."""
        if not self._writing.acquire(blocking=False):
            return
        try:
            ping_id, self._next_ping = self._next_ping, self._next_ping + 2
            self._write_locked(control_frame(PING, struct.pack(">I", ping_id)), quiet=True)
        finally:
            self._writing.release()

    def forget(self, stream_id: int) -> bool:
        with self._state:
            return self._streams.pop(stream_id, None) is not None

    @property
    def streams(self) -> int:
        return len(self._streams)

    @property
    def open_streams(self) -> int:
        """Streams this side still sends on: a connection whose client is done (its stream
        half-closed, waiting for the server's end) costs the session nothing more."""
        return sum(1 for stream in list(self._streams.values()) if not stream.finished)

    def close(self, reason: str) -> None:
        """End the session and every stream on it (idempotent; never waits for a write)."""
        with self._state:
            if self.closed.is_set():
                return
            self.reason = reason
            self.closed.set()
            streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream.ended(reason)
        if self.on_close:
            self.on_close()

    # -- reading ----------------------------------------------------------------------------

    def run(self) -> None:
        """Read and dispatch frames until the transport ends."""
        buffer = bytearray()
        try:
            while not self.closed.is_set():
                message = self._receive()
                if not message:
                    self.close("closed by the server")
                    return
                buffer += message
                # Frames are cut out by offset; the bytes left over (less than one frame) are
                # kept once per message, not copied again after every frame.
                start = 0
                with memoryview(buffer) as view:
                    while len(buffer) - start >= 8:
                        (length,) = struct.unpack_from(">I", buffer, start + 4)
                        end = start + 8 + (length & 0xFFFFFF)
                        if len(buffer) < end:
                            break
                        self._dispatch(view[start:end])
                        start = end
                del buffer[:start]
        except ProtocolError as exc:
            log.warning("SPDY session %s: %s; closing it", self.name, exc)
            self.write(control_frame(GOAWAY, struct.pack(">II", 0, GOAWAY_PROTOCOL_ERROR)), quiet=True)
            self.close(f"protocol error: {exc}")
        except Exception as exc:  # the transport failed: every stream on it is gone
            self.close(f"connection lost: {exc}")

    def _dispatch(self, frame: memoryview) -> None:
        """Handle one frame; `frame` is a view into the read buffer, so nothing may keep it."""
        first, flags_length = struct.unpack_from(">II", frame)
        flags, payload = flags_length >> 24, frame[8:]
        if not first & 0x80000000:
            stream = self._streams.get(first & 0x7FFFFFFF)
            if stream is None:
                return
            if payload:
                stream.on_data(bytes(payload))
            if flags & FLAG_FIN:
                stream.ended("finished")
            return
        kind = first & 0xFFFF
        if kind in (SYN_STREAM, SYN_REPLY, HEADERS):
            offset = 10 if kind == SYN_STREAM else 4
            self._inflate(payload[offset:])  # keeps the shared zlib context in step
            (stream_id,) = struct.unpack_from(">I", payload)
            if kind == SYN_STREAM:  # the server never opens streams for port-forward
                refuse = struct.pack(">II", stream_id & 0x7FFFFFFF, RST_REFUSED)
                self.write(control_frame(RST_STREAM, refuse), quiet=True)
            elif flags & FLAG_FIN and (stream := self._streams.get(stream_id & 0x7FFFFFFF)):
                stream.ended("finished")
        elif kind == RST_STREAM:
            stream_id, status = struct.unpack_from(">II", payload)
            with self._state:
                stream = self._streams.pop(stream_id & 0x7FFFFFFF, None)
            if stream:
                stream.ended(f"reset by the server (status {status})")
        elif kind == PING:
            (ping_id,) = struct.unpack_from(">I", payload)
            if ping_id % 2 == 0:  # the server's: answer it
                self.write(bytes(frame), quiet=True)
        elif kind == GOAWAY:
            self.close("the server said GOAWAY")
        # SETTINGS and WINDOW_UPDATE: the server does no flow control, neither do we.

    def _inflate(self, block: memoryview) -> bytes:
        """One header block, inflated to at most MAX_HEADER_BLOCK bytes (one more tells it is over).

        A refused block leaves the shared zlib context out of step with the server's, so the
        session cannot go on: ProtocolError.
        """
        headers = self._decompress.decompress(block, MAX_HEADER_BLOCK + 1)
        if len(headers) > MAX_HEADER_BLOCK or self._decompress.unconsumed_tail:
            raise ProtocolError(f"a header block inflates to over {MAX_HEADER_BLOCK} bytes")
        return headers
