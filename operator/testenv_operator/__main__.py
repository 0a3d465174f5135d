"""`python -m testenv_operator`: run the operator with JSON logs.

With TESTENV_LEADER_ELECTION set (the chart sets it), the process first waits for the Lease
(`election`) and runs kopf only while it holds it; a replica that waits answers its liveness
endpoint meanwhile, so probes pass. A holder that loses the Lease (not renewed in time, as its own
monotonic clock says, even while a renewal still hangs) steps down: its writes stop at once (the
`Mandate` its API client asks), kopf is told to stop, and the process exits 1 before anyone else
may take the Lease over, whether kopf stopped by then or not. Its pod's restart makes it a
candidate again.

The settings are read here, once, and reach kopf's startup handler (`handlers.configure`) in the
operator's memo. So do the metrics (`metrics`): their endpoint (TESTENV_METRICS) is served from
here on, before the Lease is awaited, so a standby answers scrapes too (`testenv_leader` 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import urllib.parse
from typing import NoReturn

import kopf

from testenv_operator import handlers, kopf_writes, kubeio, pool_handlers  # noqa: F401  (the handlers register with kopf)
from testenv_operator.election import Lease, Terms, keep
from testenv_operator.metrics import Metrics
from testenv_operator.settings import Settings, SettingsError, variable_name

log = logging.getLogger("testenv_operator")

#: How long a step-down waits, at most, for writes that passed the mandate's check before it was
#: revoked (they are on their way out; their answers need not come).
SETTLE_SECONDS = 1.0


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"testenv-operator: {exc}", file=sys.stderr)
        return 2
    kopf.configure(verbose=settings.reporting.log_level == "DEBUG", log_format=kopf.LogFormat.JSON)
    metrics = Metrics()
    try:
        endpoint = metrics.serve(settings.reporting.metrics)
    except OSError as exc:  # the port is taken, or the host is not this machine's
        name = variable_name(type(settings.reporting), "metrics")
        print(f"testenv-operator: cannot serve {name}={settings.reporting.metrics}: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(settings, metrics))
    except kopf_writes.UnguardableError as exc:
        print(f"testenv-operator: {exc}", file=sys.stderr)
        return 2
    finally:
        if endpoint is not None:
            endpoint.close()


async def _kopf(
    settings: Settings,
    metrics: Metrics,
    stop: asyncio.Event | None = None,
    mandate: kubeio.Mandate | None = None,
) -> None:
    namespaces = settings.tenants.namespaces
    metrics.leader.set(1)
    await kopf.operator(
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=settings.reporting.liveness or None,
        standalone=True,
        stop_flag=stop,
        memo=kopf.Memo(settings=settings, mandate=mandate or kubeio.Mandate(), metrics=metrics),
    )


async def _run(settings: Settings, metrics: Metrics) -> int:
    leadership = settings.leadership
    if not leadership.leader_election:
        await _kopf(settings, metrics)
        return 0
    namespace, name = leadership.leader_election
    terms = Terms.of(leadership.lease_seconds)
    api = kubeio.connect(terms.lease_calls, connections=2, errors=metrics.api_error)
    lease = Lease(api, namespace, name, terms=terms)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)  # kopf installs its own once it runs
    mandate = kubeio.Mandate()
    kopf_writes.guard(mandate)  # kopf's own finalizer, annotation and Event writes stop with ours
    if not await _wait_for_lease(lease, settings, stopped):
        return 0
    log.info("holding the Lease %s/%s as %s: running", namespace, name, lease.holder)
    kopf_stop = asyncio.Event()
    operator = asyncio.create_task(_kopf(settings, metrics, kopf_stop, mandate))
    keeper = asyncio.create_task(keep(lease))
    await asyncio.wait({operator, keeper}, return_when=asyncio.FIRST_COMPLETED)
    if keeper.done() and not keeper.cancelled():
        metrics.leader.set(0)
        await _step_down(lease, keeper, mandate, kopf_stop, operator)
    keeper.cancel()  # kopf stopped on its own: SIGTERM (a clean stop), or it failed
    operator.result()
    await asyncio.to_thread(lease.release)
    return 0


async def _step_down(
    lease: Lease,
    keeper: asyncio.Task[str],
    mandate: kubeio.Mandate,
    kopf_stop: asyncio.Event,
    operator: asyncio.Task[None],
) -> NoReturn:
    """Stop writing at once, stop kopf, and be gone before anyone else may take the Lease
    (`Terms.exit_deadline`); the pod's restart makes the process a candidate again."""
    try:
        why = keeper.result()
    except Exception as exc:  # the renewals themselves broke: no longer sure to hold it
        why = f"renewing failed: {exc!r}"
    mandate.revoke(why)
    # A write that passed the check just before may still be leaving: let it go (a bounded wait,
    # well inside the exit deadline) before saying none is sent from here on.
    going = await asyncio.to_thread(mandate.settle, min(SETTLE_SECONDS, lease.exit_in() / 2))
    log.error(
        "stepping down: lost the Lease %s/%s (%s); no more writes%s, stopping, so that the next "
        "holder acts alone",
        lease.namespace,
        lease.name,
        why,
        f" ({going} sent before still unanswered)" if going else "",
    )
    kopf_stop.set()
    try:
        await asyncio.wait_for(asyncio.shield(operator), timeout=max(0.0, lease.exit_in()))
    except TimeoutError:
        log.error("kopf has not stopped in time: exiting now, before another holder may take over")
    except Exception as exc:  # kopf failed while stopping: exiting is all that is left
        log.error("kopf stopped with an error: %r", exc)
    _exit_now(1)


def _exit_now(code: int) -> NoReturn:
    """Exit without waiting for threads: one stuck in a call on the dead connection would hold the
    interpreter's exit until its read timeout (asyncio.run waits for its executor, and
    concurrent.futures joins its workers), and the process must be gone by the exit deadline."""
    logging.shutdown()  # flushes the log first
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


async def _wait_for_lease(lease: Lease, settings: Settings, stopped: asyncio.Event) -> bool:
    """Until this process holds the Lease (True) or is told to stop (False)."""
    standby = await _standby_endpoint(settings.reporting.liveness)
    try:
        said = ""
        while not stopped.is_set():
            try:
                if await asyncio.to_thread(lease.try_hold):
                    return True
                holder = lease.seen_holder or "nobody"
            except Exception as exc:  # refused, timed out, or the API server is away: keep waiting
                holder = f"unknown ({exc})"
            if holder != said:
                log.info("standby: the Lease %s/%s is held by %s", lease.namespace, lease.name, holder)
                said = holder
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), lease.terms.retry)
        return False
    finally:
        if standby is not None:
            standby.close()
            await standby.wait_closed()


async def _standby_endpoint(liveness: str) -> asyncio.Server | None:
    """While waiting, the liveness endpoint says 200 `standby` (kopf serves it once running)."""
    if not liveness:
        return None
    where = urllib.parse.urlsplit(liveness)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nstandby\n")
            await writer.drain()
        writer.close()

    return await asyncio.start_server(answer, where.hostname, where.port, reuse_address=True)


if __name__ == "__main__":
    sys.exit(main())
