"""The SPDY/3.1 session and the websocket pipe under it, against a scripted peer on a socketpair."""

from __future__ import annotations

import hashlib
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from websocket import ABNF

from testenv_harness.tunnel import spdy
from testenv_harness.tunnel.wspipe import WebsocketPipe
from tests.unit.spdy_peer import FakeWebsocket, Peer


def test_the_dictionary_is_the_spdy3_one() -> None:
    # Length and digest of the dictionary in draft-mbelshe-httpbis-spdy-00 (as in moby/spdystream).
    assert len(spdy.DICTIONARY) == 1423
    digest = "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
    assert hashlib.sha256(spdy.DICTIONARY).hexdigest() == digest


def test_header_blocks_round_trip_and_lowercase_names() -> None:
    block = spdy.encode_headers({"StreamType": "data", "port": "6379", "requestID": "7"})
    assert spdy.decode_headers(block) == {"streamtype": "data", "port": "6379", "requestid": "7"}


@pytest.fixture
def pair() -> Iterator[tuple[spdy.Session, Peer]]:
    ours, theirs = socket.socketpair()
    session = spdy.Session(ours.sendall, lambda: ours.recv(65536), "test/pod")
    session.on_close = ours.close
    thread = threading.Thread(target=session.run, daemon=True)
    thread.start()
    yield session, Peer(theirs)
    session.close("test over")
    theirs.close()
    thread.join(2)


def _open_pair(session: spdy.Session) -> tuple[list[bytes], list[str], list[spdy.Stream]]:
    received: list[bytes] = []
    ends: list[str] = []
    streams = session.open(
        [{"streamType": "error", "port": "6379"}, {"streamType": "data", "port": "6379"}],
        [(lambda _b: None, lambda _r: None), (received.append, ends.append)],
        fin=[True, False],
    )
    return received, ends, streams


def test_a_stream_pair_goes_out_in_one_write_and_data_flows_both_ways(
    pair: tuple[spdy.Session, Peer],
) -> None:
    session, peer = pair
    received, ends, (error, data) = _open_pair(session)
    assert peer.syn_stream() == (1, {"streamtype": "error", "port": "6379"})
    assert peer.frame() == (False, 1, spdy.FLAG_FIN, b""), "the error stream is half-closed at once"
    assert peer.syn_stream() == (3, {"streamtype": "data", "port": "6379"})
    data.send(b"PING\r\n")
    assert peer.frame() == (False, 3, 0, b"PING\r\n")
    peer.send(spdy.data_frame(3, b"+PONG\r\n") + spdy.data_frame(3, b"", spdy.FLAG_FIN))
    peer.send(spdy.control_frame(spdy.PING, struct.pack(">I", 4)))  # answered after the data
    assert peer.frame() == (True, spdy.PING, 0, struct.pack(">I", 4))
    assert received == [b"+PONG\r\n"]
    assert ends == ["finished"]
    data.reset()
    assert peer.frame() == (True, spdy.RST_STREAM, 0, struct.pack(">II", 3, spdy.RST_CANCEL))
    assert session.streams == 1  # the error stream is still known until its owner resets it
    error.reset()
    assert session.streams == 0


def test_the_servers_ping_is_answered_and_goaway_ends_every_stream(pair: tuple[spdy.Session, Peer]) -> None:
    session, peer = pair
    _, ends, _ = _open_pair(session)
    for _ in range(3):
        peer.frame()
    peer.send(spdy.control_frame(spdy.PING, struct.pack(">I", 2)))
    assert peer.frame() == (True, spdy.PING, 0, struct.pack(">I", 2))
    peer.send(spdy.control_frame(spdy.GOAWAY, struct.pack(">II", 0, 0)))
    assert session.closed.wait(2)
    assert ends == ["the server said GOAWAY"]
    with pytest.raises(spdy.SessionClosedError):
        _open_pair(session)


def test_a_lost_transport_closes_the_session(pair: tuple[spdy.Session, Peer]) -> None:
    session, peer = pair
    _, ends, _ = _open_pair(session)
    for _ in range(3):
        peer.frame()
    peer.sock.close()
    assert session.closed.wait(2)
    assert ends == [session.reason]
    assert session.reason.startswith("closed by the server")


def test_the_pipe_joins_fragments_answers_pings_and_masks_what_it_sends() -> None:
    ours, theirs = socket.socketpair()
    pipe = WebsocketPipe(FakeWebsocket(ours), idle=0.1)  # type: ignore[arg-type]
    ping = bytes([0x89, 2]) + b"hi"
    first = bytes([0x02, 3]) + b"abc"  # binary, not final
    last = bytes([0x80, 126]) + struct.pack(">H", 200) + b"d" * 200  # continuation, final, 16-bit length
    theirs.sendall(ping + first + last)
    assert pipe.receive() == b"abc" + b"d" * 200
    pong = ABNF.create_frame(b"hi", ABNF.OPCODE_PONG)
    raw = theirs.recv(64)
    assert (raw[0], raw[1] & 0x80) == (0x8A, 0x80), "a masked PONG"
    assert len(raw) == 2 + 4 + len(pong.data)
    pipe.send(b"x" * 10)
    raw = theirs.recv(64)
    key, body = raw[2:6], raw[6:]
    assert bytes(b ^ key[i % 4] for i, b in enumerate(body)) == b"x" * 10
    theirs.sendall(bytes([0x88, 2]) + struct.pack(">H", 1000))
    assert pipe.receive() == b""
    pipe.close()
    theirs.close()
