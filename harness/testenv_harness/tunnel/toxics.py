"""Toxics: network faults applied inside one worker's forwards, named and meant as Toxiproxy's.

A `Toxic` is checked when it is made (`parse_toxic`), before anything changes. A listener's
`Toxics` holds the ordered list of toxics in force and the connections it carries. While the
list is empty a connection has no `Link` and its bytes take the tunnel's own path, untouched.
Once a toxic is added, every connection of the listener (open ones too, as in Toxiproxy) gets a
`Link`: one thread per direction that passes each chunk through the toxics of its stream, in
the order they were added, and hands it on. A connection keeps its link once it has one
(without toxics it only passes bytes on); a connection opened with no toxic never has one.

Each toxic meets a connection once: then it is decided whether it applies to it (`toxicity`,
the probability, as Toxiproxy decides per connection) and its clock starts (`timeout`,
`reset_peer`). Latencies are counted from when a chunk arrived, so chunks that queue behind a
delayed one are not delayed twice; stacked latencies add up.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

UPSTREAM, DOWNSTREAM = "upstream", "downstream"
STREAMS = (UPSTREAM, DOWNSTREAM)
#: Bytes a direction of a linked connection holds before its writer waits (TCP pushes back).
PIPE_BUFFER = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Attribute:
    unit: str
    meaning: str
    minimum: int = 0


#: Every toxic's attributes (all integers, 0 unless given), as Toxiproxy names them.
TOXICS: dict[str, dict[str, Attribute]] = {
    "latency": {
        "latency": Attribute("ms", "delay added to each chunk"),
        "jitter": Attribute("ms", "the delay varies by up to this much either way"),
    },
    "bandwidth": {"rate": Attribute("KB/s", "most bytes per second, in thousands (0: no limit)")},
    "slow_close": {"delay": Attribute("ms", "wait before the close is passed on")},
    "timeout": {"timeout": Attribute("ms", "stop all data; close the connection after this (0: never)")},
    "reset_peer": {"timeout": Attribute("ms", "reset the connection (TCP RST) after this")},
    "slicer": {
        "average_size": Attribute("bytes", "average size of the pieces a chunk is cut into", 1),
        "size_variation": Attribute("bytes", "pieces vary by up to this much either way"),
        "delay": Attribute("microseconds", "pause between pieces"),
    },
    "limit_data": {"bytes": Attribute("bytes", "close the connection once this many went through")},
}


class ToxicError(ValueError):
    """A toxic that cannot be applied as given; the message names the field and the fix."""


@dataclasses.dataclass(frozen=True, eq=False)
class Toxic:
    """One toxic as given; each instance is its own toxic (two alike stack)."""

    kind: str
    attributes: Mapping[str, int]
    stream: str = DOWNSTREAM
    toxicity: float = 1.0

    def __getitem__(self, name: str) -> int:
        return self.attributes[name]

    def describe(self) -> dict[str, object]:
        return {"toxic": self.kind, **self.attributes, "stream": self.stream, "toxicity": self.toxicity}


def _toxic_help() -> str:
    return "; ".join(f"{kind} ({', '.join(attributes)})" for kind, attributes in TOXICS.items())


def _integer(kind: str, name: str, value: object, minimum: int) -> int:
    unit = TOXICS[kind][name].unit
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    if number is None or number < minimum:
        raise ToxicError(
            f"{kind} {name}={value!r}: give a whole number of {unit}, at least {minimum} "
            f"(e.g. {name}={max(minimum, 100)})"
        )
    return number


def _toxicity(value: object) -> float:
    probability = -1.0
    if not isinstance(value, bool):
        with contextlib.suppress(ValueError):
            probability = float(str(value))
    if not 0.0 <= probability <= 1.0:
        raise ToxicError(
            f"toxicity={value!r}: give the probability that a connection gets the toxic, "
            "from 0 to 1 (e.g. toxicity=0.5; 1, the default, is every connection)"
        )
    return probability


def parse_toxic(kind: str, settings: Mapping[str, object]) -> Toxic:
    """The toxic `kind` with `settings` (its attributes, `stream`, `toxicity`), checked whole."""
    if kind not in TOXICS:
        raise ToxicError(f"unknown toxic {kind!r}: use one of {_toxic_help()}, or down")
    known = TOXICS[kind]
    for name in settings:
        if name not in known and name not in ("stream", "toxicity"):
            allowed = ", ".join([*known, "stream", "toxicity"])
            raise ToxicError(f"{kind} has no attribute {name!r}: its attributes are {allowed}")
    stream = str(settings.get("stream", DOWNSTREAM))
    if stream not in STREAMS:
        raise ToxicError(
            f"stream={stream!r}: use upstream (client to service) or downstream (service to client, "
            "the default)"
        )
    attributes = {
        name: _integer(kind, name, settings.get(name, attribute.minimum), attribute.minimum)
        for name, attribute in known.items()
    }
    if kind == "slicer" and attributes["size_variation"] >= attributes["average_size"]:
        raise ToxicError(
            f"slicer size_variation={attributes['size_variation']}: keep it below average_size "
            f"({attributes['average_size']}), so that every piece has at least one byte"
        )
    return Toxic(kind, attributes, stream, _toxicity(settings.get("toxicity", 1.0)))


def parse_settings(pairs: list[str]) -> dict[str, str]:
    """`["latency=300", "stream=upstream"]` as a mapping (ToxicError naming a malformed pair)."""
    settings: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ToxicError(f"--set {pair!r}: write NAME=VALUE, e.g. --set latency=300")
        settings[name.strip()] = value.strip()
    return settings


# -- connections ----------------------------------------------------------------------------


class Carrier(Protocol):
    """What a tunnel offers its link: the ends its bytes go to, and its close."""

    link: Link | None

    def to_server(self, data: bytes) -> None: ...

    def to_client(self, data: bytes) -> None: ...

    def server_ended(self) -> None: ...

    def close(self, reset: bool = False) -> None: ...


def reset_socket(sock: socket.socket) -> None:
    """Make the socket's close a TCP reset, and wake its reader without sending a FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)


class Toxics:
    """The toxics in force on one listener, in order, and the connections it carries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active: tuple[Toxic, ...] = ()  # replaced whole on change: read without the lock
        self._carriers: set[Carrier] = set()
        self._cutting = False  # between `cut` and `resume`: a connection that arrives is closed

    def add(self, toxic: Toxic) -> None:
        with self._lock:
            self.active = (*self.active, toxic)
            for carrier in self._carriers:
                self._link(carrier)
            self._changed()

    def remove(self, toxic: Toxic) -> None:
        with self._lock:
            self.active = tuple(t for t in self.active if t is not toxic)
            self._changed()

    def attach(self, carrier: Carrier) -> None:
        with self._lock:
            cut = self._cutting
            if not cut:
                self._carriers.add(carrier)
                if self.active:
                    self._link(carrier)
        if cut:  # accepted just before its listener went down
            carrier.close()

    def detach(self, carrier: Carrier) -> None:
        with self._lock:
            self._carriers.discard(carrier)
        if carrier.link is not None:
            carrier.link.close()

    def cut(self) -> int:
        """Close every connection carried now, and any that arrives until `resume` (what a service
        going down does to them)."""
        with self._lock:
            self._cutting = True
            carriers = list(self._carriers)
        for carrier in carriers:
            carrier.close()
        return len(carriers)

    def resume(self) -> None:
        with self._lock:
            self._cutting = False

    def _link(self, carrier: Carrier) -> None:
        if carrier.link is None:
            carrier.link = Link(self, carrier)
            carrier.link.start()  # only now: a pipe that ends the connection at once finds its link

    def _changed(self) -> None:
        for carrier in self._carriers:
            if carrier.link is not None:
                carrier.link.wake()


class _EndError(Exception):
    def __init__(self, reset: bool) -> None:
        self.reset = reset


@dataclasses.dataclass
class _Met:
    """A toxic as one connection met it."""

    applies: bool
    started: float
    sent: int = 0  # limit_data
    free_at: float = 0.0  # bandwidth: when the next byte may go


class Link:
    """One connection's two toxic pipelines."""

    def __init__(self, toxics: Toxics, carrier: Carrier) -> None:
        self.toxics = toxics
        self.carrier = carrier
        self.cond = threading.Condition()
        self.closed = False
        self._met: dict[Toxic, _Met] = {}
        self.upstream = Pipe(self, UPSTREAM, carrier.to_server, lambda: None)
        self.downstream = Pipe(self, DOWNSTREAM, carrier.to_client, carrier.server_ended)

    def start(self) -> None:
        self.upstream.start()
        self.downstream.start()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        self.upstream.done.set()
        self.downstream.done.set()

    def chain(self, stream: str) -> list[tuple[Toxic, _Met]]:
        """The toxics in force on `stream` that apply to this connection, in order."""
        found = []
        with self.cond:  # both directions meet toxics: each is decided once
            for toxic in self.toxics.active:
                if toxic.stream != stream:
                    continue
                met = self._met.get(toxic)
                if met is None:
                    met = self._met[toxic] = _Met(random.random() < toxic.toxicity, time.monotonic())
                if met.applies:
                    found.append((toxic, met))
        return found

    def sleep_until(self, deadline: float, toxic: Toxic) -> None:
        """Wait until `deadline`, less if the toxic is removed meanwhile; _EndError if closed."""
        with self.cond:
            while not self.closed and toxic in self.toxics.active:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            if self.closed:
                raise _EndError(reset=False)


Pieces = Iterator[bytes]
#: A toxic's effect on a chunk: the pieces it lets through, when; `due` is when the chunk is due.
Stage = Callable[[Link, Toxic, _Met, Pieces, list[float]], Pieces]


def _latency(link: Link, toxic: Toxic, met: _Met, pieces: Pieces, due: list[float]) -> Pieces:
    jitter = toxic["jitter"]
    delay = toxic["latency"] + (random.randint(-jitter, jitter) if jitter else 0)
    due[0] += max(0, delay) / 1000
    for piece in pieces:
        link.sleep_until(due[0], toxic)
        yield piece


def _bandwidth(link: Link, toxic: Toxic, met: _Met, pieces: Pieces, due: list[float]) -> Pieces:
    rate = toxic["rate"] * 1000
    for piece in pieces:
        if not rate:
            yield piece
            continue
        step = max(1, rate // 10)  # a tenth of a second's worth at a time
        for start in range(0, len(piece), step):
            part = piece[start : start + step]
            met.free_at = max(met.free_at, time.monotonic()) + len(part) / rate
            link.sleep_until(met.free_at, toxic)
            yield part


def _slicer(link: Link, toxic: Toxic, met: _Met, pieces: Pieces, due: list[float]) -> Pieces:
    average, variation, pause = toxic["average_size"], toxic["size_variation"], toxic["delay"] / 1e6
    for piece in pieces:
        start = 0
        while start < len(piece):
            size = average + random.randint(-variation, variation)
            if start:
                link.sleep_until(time.monotonic() + pause, toxic)
            yield piece[start : start + size]
            start += size


def _timeout(link: Link, toxic: Toxic, met: _Met, pieces: Pieces, due: list[float]) -> Pieces:
    for _ in pieces:  # every byte is dropped; its clock (Pipe._expiry) closes the connection
        pass
    yield from ()


def _limit_data(link: Link, toxic: Toxic, met: _Met, pieces: Pieces, due: list[float]) -> Pieces:
    limit = toxic["bytes"]
    for piece in pieces:
        part = piece[: max(0, limit - met.sent)]
        met.sent += len(part)
        if part:
            yield part
        if met.sent >= limit:
            raise _EndError(reset=False)


def _passing(link: Link, toxic: Toxic, met: _Met, pieces: Pieces, due: list[float]) -> Pieces:
    return pieces  # slow_close acts on the close; reset_peer on its clock


STAGES: dict[str, Stage] = {
    "latency": _latency,
    "bandwidth": _bandwidth,
    "slicer": _slicer,
    "timeout": _timeout,
    "limit_data": _limit_data,
    "slow_close": _passing,
    "reset_peer": _passing,
}


class Pipe:
    """One direction of a linked connection: a queue, and a thread passing it through the toxics."""

    def __init__(
        self, link: Link, stream: str, output: Callable[[bytes], None], finish: Callable[[], None]
    ) -> None:
        self.link = link
        self.stream = stream
        self.output = output
        self.finish = finish
        self._queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self._queued = 0
        #: Set once the end went through (or the link closed).
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"toxics-{stream}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def push(self, data: bytes) -> None:
        """Queue a chunk (b"": the end), waiting while PIPE_BUFFER bytes wait already."""
        with self.link.cond:
            while self._queued > PIPE_BUFFER and not self.link.closed:
                self.link.cond.wait()
            if self.link.closed:
                return
            self._queue.append((time.monotonic(), data))
            self._queued += len(data)
            self.link.cond.notify_all()

    def end(self) -> threading.Event:
        """Queue the end; `done` is set once it went through (slow_close) and `finish` ran."""
        self.push(b"")
        return self.done

    def _next(self) -> tuple[float, bytes] | None:
        """The next chunk, None once closed; meanwhile the toxics' clocks may close the link."""
        link = self.link
        with link.cond:
            while not self._queue and not link.closed:
                expiry = self._expiry()
                if expiry is not None and expiry[0] <= time.monotonic():
                    raise _EndError(expiry[1])
                link.cond.wait(None if expiry is None else expiry[0] - time.monotonic())
            if link.closed:
                return None
            item = self._queue.popleft()
            self._queued -= len(item[1])
            link.cond.notify_all()
            return item

    def _expiry(self) -> tuple[float, bool] | None:
        """When a `timeout` (close) or `reset_peer` (reset) toxic of this stream ends the connection."""
        found: tuple[float, bool] | None = None
        for toxic, met in self.link.chain(self.stream):
            if toxic.kind == "reset_peer" or (toxic.kind == "timeout" and toxic["timeout"] > 0):
                at = (met.started + toxic["timeout"] / 1000, toxic.kind == "reset_peer")
                found = at if found is None or at[0] < found[0] else found
        return found

    def _check_expiry(self) -> None:
        expiry = self._expiry()
        if expiry is not None and expiry[0] <= time.monotonic():
            raise _EndError(expiry[1])

    def _run(self) -> None:
        try:
            while (item := self._next()) is not None:
                self._check_expiry()  # a chunk queued past the deadline is never passed on
                arrived, data = item
                chain = self.link.chain(self.stream)
                if not data:  # the end
                    for toxic, _met in chain:
                        if toxic.kind == "slow_close":
                            self.link.sleep_until(time.monotonic() + toxic["delay"] / 1000, toxic)
                    self.finish()
                    self.done.set()
                    return
                pieces: Iterator[bytes] = iter((data,))
                due = [arrived]
                for toxic, met in chain:
                    pieces = STAGES[toxic.kind](self.link, toxic, met, pieces, due)
                for piece in pieces:
                    self.output(piece)
                self._check_expiry()
        except _EndError as closing:
            if not self.link.closed:
                self.link.carrier.close(reset=closing.reset)
        except Exception:  # the connection's end went away under a write: the tunnel closes it
            self.link.carrier.close()
        finally:
            self.done.set()
