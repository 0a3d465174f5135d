"""The operator's pass gate (urgent passes first) and its budget of full resyncs."""

from __future__ import annotations

import asyncio

from testenv_operator.gate import PassGate, ResyncBudget


def test_an_urgent_pass_waiting_goes_before_routine_ones_that_waited_longer() -> None:
    async def scenario() -> list[str]:
        gate = PassGate(1)
        order: list[str] = []
        release = asyncio.Event()

        async def one(name: str, urgent: bool, hold: asyncio.Event | None = None) -> None:
            async with gate.place(urgent):
                order.append(name)
                if hold is not None:
                    await hold.wait()

        holder = asyncio.create_task(one("holder", False, release))
        await asyncio.sleep(0)
        routine = [asyncio.create_task(one(f"routine-{i}", False)) for i in range(3)]
        await asyncio.sleep(0)
        urgent = asyncio.create_task(one("urgent", True))
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(holder, *routine, urgent)
        assert gate.free == 1
        assert gate.urgent_waiting == 0
        return order

    assert asyncio.run(scenario()) == ["holder", "urgent", "routine-0", "routine-1", "routine-2"]


def test_places_are_given_back_when_a_pass_raises() -> None:
    async def scenario() -> int:
        gate = PassGate(2)
        for _ in range(3):
            try:
                async with gate.place(urgent=True):
                    raise RuntimeError("pass failed")
            except RuntimeError:
                pass
        return gate.free

    assert asyncio.run(scenario()) == 2


def test_the_budget_allows_its_rate_and_refills_with_time() -> None:
    now = [100.0]
    budget = ResyncBudget(5, clock=lambda: now[0])
    assert [budget.take() for _ in range(7)] == [True] * 5 + [False] * 2
    now[0] += 0.2  # one more token
    assert budget.take()
    assert not budget.take()
    now[0] += 60  # never more than a second's worth saved up
    assert sum(budget.take() for _ in range(20)) == 5
