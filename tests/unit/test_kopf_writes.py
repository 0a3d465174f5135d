"""kopf's own requests under the operator's mandate (testenv_operator.kopf_writes), without a
cluster: kopf's `api.patch` and `api.get` are called as kopf calls them, with the function they
all pass through replaced by a recorder, so what reaches it is what would have been sent."""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Any

import kopf
import pytest

from testenv_operator import kopf_writes
from testenv_operator.kubeio import Mandate, NotActingError

api: Any = importlib.import_module(kopf_writes.MODULE)


class _Answer:
    async def __aenter__(self) -> _Answer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def json(self) -> dict[str, Any]:
        return {"ok": True}


class Recorder:
    """Stands where kopf's authenticated request function is: records each call; `hold` keeps
    the next one open until released, as a request waiting on its answer."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []
        self.hold: asyncio.Event | None = None
        self.function: Any = None

    async def __call__(self, method: str, url: str, **_: Any) -> _Answer:
        self.sent.append((method.upper(), url))
        if self.hold is not None:
            await self.hold.wait()
        return _Answer()


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recording = Recorder()

    async def request(method: str, url: str, **kwargs: Any) -> _Answer:
        return await recording(method, url, **kwargs)

    monkeypatch.setattr(api, "request", request)
    recording.function = request
    return recording


def _call(name: str, url: str) -> Any:
    kwargs: dict[str, Any] = {"settings": kopf.OperatorSettings(), "logger": logging.getLogger("test")}
    if name == "patch":
        kwargs["payload"] = {"metadata": {"finalizers": ["testenv.dev/cleanup"]}}
    return getattr(api, name)(url, **kwargs)


def test_kopf_writes_while_the_mandate_is_held_and_not_after(recorder: Recorder) -> None:
    mandate = Mandate()
    undo = kopf_writes.guard(mandate)
    try:
        asyncio.run(_call("patch", "/apis/testenv.dev/v1alpha1/namespaces/t/testenvironments/a"))
        mandate.revoke("lost the Lease")
        with pytest.raises(NotActingError, match="lost the Lease"):
            asyncio.run(_call("patch", "/apis/testenv.dev/v1alpha1/namespaces/t/testenvironments/b"))
        with pytest.raises(NotActingError):
            asyncio.run(_call("post", "/api/v1/namespaces/t/events"))
        asyncio.run(_call("get", "/apis/testenv.dev/v1alpha1/namespaces/t/testenvironments/b"))
    finally:
        undo()
    assert recorder.sent == [
        ("PATCH", "/apis/testenv.dev/v1alpha1/namespaces/t/testenvironments/a"),
        ("GET", "/apis/testenv.dev/v1alpha1/namespaces/t/testenvironments/b"),
    ]
    assert api.request is recorder.function  # undone


def test_a_kopf_write_under_way_is_waited_for_by_the_step_down(recorder: Recorder) -> None:
    mandate = Mandate()
    undo = kopf_writes.guard(mandate)

    async def scenario() -> tuple[int, int]:
        recorder.hold = asyncio.Event()
        write = asyncio.create_task(_call("patch", "/api/v1/namespaces/t"))
        while not recorder.sent:
            await asyncio.sleep(0)
        mandate.revoke("lost the Lease")
        still = await asyncio.to_thread(mandate.settle, 0.05)
        recorder.hold.set()
        await write
        return still, await asyncio.to_thread(mandate.settle, 1.0)

    try:
        assert asyncio.run(scenario()) == (1, 0)
    finally:
        undo()


def test_a_kopf_without_its_request_function_stops_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(api, "request")
    with pytest.raises(kopf_writes.UnguardableError, match="kopf_writes"):
        kopf_writes.guard(Mandate())
