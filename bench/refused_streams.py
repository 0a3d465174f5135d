"""Benchmark (a trace, really): what refused port-forward connections do to the SPDY session
that carries them, on a real kubelet.

On one session to a pod, `--refusals` stream pairs go to a port nothing listens on (`--closed`),
one every 0.5 s, each either sending a few bytes at once (as a client does) or nothing; then one
HTTP GET goes to a port that answers (`--open`). It prints, per connection, whether the kubelet's
side answered (its error, or the GET's status line) within `--wait` seconds. The kubelet's SPDY
server hands a stream's data to its reader from one of five frame workers chosen by stream id; a
refused stream's bytes are never read, so sending them blocks that worker for good: after a few
such refusals nothing on the session is answered. With `--no-send`, nothing blocks.

Defaults fit a kind cluster of ours: the coredns pod in kube-system (53 and 8080 listen there).
Run: `.venv/bin/python bench/refused_streams.py --kubeconfig K [--no-send]`. It asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence

from testenv_harness.ground import k8s, kube
from testenv_harness.tunnel.portforward import open_session
from testenv_harness.tunnel.spdy import Session

GET = b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"


def _pair(session: Session, request: int, port: int, payload: bytes) -> threading.Event:
    """Open a stream pair to `port` (sending `payload` at once); the event is set on any answer."""
    answered = threading.Event()

    def heard(_data: bytes) -> None:
        answered.set()

    base = {"port": str(port), "requestid": str(request)}
    _, data = session.open(
        [base | {"streamtype": "error"}, base | {"streamtype": "data"}],
        [(heard, lambda _r: None), (heard, lambda _r: None)],
        fin=[True, False],
    )
    if payload:
        data.send(payload)
    return answered


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--namespace", default="kube-system")
    parser.add_argument("--pod", default="", help="default: the first coredns pod")
    parser.add_argument("--closed", type=int, default=6390, help="a port nothing listens on")
    parser.add_argument("--open", type=int, default=8080, help="a port that answers HTTP GET /health")
    parser.add_argument("--refusals", type=int, default=7)
    parser.add_argument("--no-send", action="store_true", help="refused connections send nothing")
    parser.add_argument("--wait", type=float, default=3.0, help="seconds to wait for each answer")
    args = parser.parse_args(argv)
    api = kube.api_client(args.kubeconfig, None)
    pod = args.pod or next(
        p.metadata.name
        for p in k8s.client.CoreV1Api(api).list_namespaced_pod(args.namespace).items
        if p.metadata.name.startswith("coredns-")
    )
    session = open_session(api, args.namespace, pod)
    payload = b"" if args.no_send else b"PING\r\n"
    print(
        f"{args.namespace}/{pod}: {args.refusals} connections to port {args.closed}, "
        f"{'sending nothing' if args.no_send else 'each sending 6 bytes at once'}, then GET on {args.open}"
    )
    print(f"| connection | streams (error/data) | port | answered within {args.wait:g}s |")
    print("|---:|---|---:|---|")
    try:
        for request in range(args.refusals + 1):
            last = request == args.refusals
            port = args.open if last else args.closed
            started = time.monotonic()
            answered = _pair(session, request, port, GET if last else payload)
            heard = answered.wait(args.wait)
            took = f"yes, {time.monotonic() - started:.3f}s" if heard else "**no**"
            ids = f"{4 * request + 1}/{4 * request + 3}"
            print(f"| {request + 1} | {ids} | {port} | {took} |", flush=True)
            time.sleep(0.5)
    finally:
        session.close("benchmark over")
    return 0


if __name__ == "__main__":
    sys.exit(main())
