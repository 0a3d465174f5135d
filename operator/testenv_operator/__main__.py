"""`python -m testenv_operator`: run the operator with JSON logs.

With TESTENV_LEADER_ELECTION set (the chart sets it), the process first waits for the Lease
(`election`) and runs kopf only while it holds it; a replica that waits answers its liveness
endpoint meanwhile, so probes pass. A holder that loses the Lease stops kopf and exits 1, and its
pod's restart makes it a candidate again.

The settings are read here, once, and reach kopf's startup handler (`handlers.configure`) in the
operator's memo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time
import urllib.parse

import kopf

from testenv_operator import handlers, kubeio, pool_handlers  # noqa: F401  (the handlers register with kopf)
from testenv_operator.election import Lease
from testenv_operator.settings import Settings, SettingsError

log = logging.getLogger("testenv_operator")


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"testenv-operator: {exc}", file=sys.stderr)
        return 2
    kopf.configure(verbose=settings.reporting.log_level == "DEBUG", log_format=kopf.LogFormat.JSON)
    return asyncio.run(_run(settings))


async def _kopf(settings: Settings, stop: asyncio.Event | None = None) -> None:
    namespaces = settings.tenants.namespaces
    await kopf.operator(
        clusterwide=not namespaces,
        namespaces=list(namespaces),
        liveness_endpoint=settings.reporting.liveness or None,
        standalone=True,
        stop_flag=stop,
        memo=kopf.Memo(settings=settings),
    )


async def _run(settings: Settings) -> int:
    leadership = settings.leadership
    if not leadership.leader_election:
        await _kopf(settings)
        return 0
    namespace, name = leadership.leader_election
    lease = Lease(
        kubeio.connect(),
        namespace,
        name,
        duration=leadership.lease_seconds,
        renew_deadline=leadership.lease_seconds * 2 / 3,
        retry=max(1.0, leadership.lease_seconds / 7.5),
    )
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopped.set)  # kopf installs its own once it runs
    if not await _wait_for_lease(lease, settings, stopped):
        return 0
    log.info("holding the Lease %s/%s as %s: running", namespace, name, lease.holder)
    kopf_stop = asyncio.Event()
    operator = asyncio.create_task(_kopf(settings, kopf_stop))
    keeper = asyncio.create_task(_keep(lease, kopf_stop))
    await operator
    lost = keeper.done() and keeper.result()
    keeper.cancel()
    if lost:
        return 1
    await asyncio.to_thread(lease.release)
    return 0


async def _wait_for_lease(lease: Lease, settings: Settings, stopped: asyncio.Event) -> bool:
    """Until this process holds the Lease (True) or is told to stop (False)."""
    standby = await _standby_endpoint(settings.reporting.liveness)
    try:
        said = ""
        while not stopped.is_set():
            try:
                if await asyncio.to_thread(lease.try_hold, time.monotonic()):
                    return True
                holder = await asyncio.to_thread(lease.holder_now)
            except Exception as exc:  # refused, or the API server is away: keep waiting
                holder = f"unknown ({exc})"
            if holder != said:
                log.info("standby: the Lease %s/%s is held by %s", lease.namespace, lease.name, holder)
                said = holder
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopped.wait(), lease.retry)
        return False
    finally:
        if standby is not None:
            standby.close()
            await standby.wait_closed()


async def _keep(lease: Lease, kopf_stop: asyncio.Event) -> bool:
    """Renew the Lease; stop kopf and return True once it could not be renewed in time."""
    while True:
        await asyncio.sleep(lease.retry)
        try:
            await asyncio.to_thread(lease.try_hold, time.monotonic())
        except Exception as exc:  # refused, or the API server is away: lost() decides
            log.warning("renewing the Lease failed: %s", exc)
        if lease.lost(time.monotonic()):
            log.error(
                "lost the Lease %s/%s (not renewed for %.0fs): stopping, so that the new holder acts alone",
                lease.namespace,
                lease.name,
                lease.renew_deadline,
            )
            kopf_stop.set()
            return True


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
