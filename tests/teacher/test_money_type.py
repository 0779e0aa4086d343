"""The one money type: a budget reserves a request at its worst case, settles it to its real cost, refunds
an attempt that cost nothing, and keeps totals that add up like any other `Spend`."""

from __future__ import annotations

import asyncio

import pytest

from components.teacher.money import Budget, Spend, token_cost

PRICES = (1000.0, 2000.0)


def test_a_settled_request_costs_its_usage_and_releases_its_reservation():
    budget = Budget(max_cost=1.0)
    assert budget.reserve_now(0.5) and budget.held == 0.5 and budget.in_flight == 1
    cost = budget.settle(0.5, 100, 50, PRICES)
    assert cost == pytest.approx(token_cost(100, 50, PRICES)) == pytest.approx(0.2)
    assert budget.spent == Spend(1, 100, 50, cost) and budget.held == 0.0 and budget.in_flight == 0


def test_a_refund_costs_nothing_and_a_forfeit_or_unreported_usage_costs_the_worst_case():
    budget = Budget()
    for _ in range(4):
        budget.reserve_now(0.25)
    assert budget.refund(0.25) == 0.0
    assert budget.forfeit(0.25) == 0.25
    assert budget.settle(0.25, 10, 10, PRICES, reported=False) == 0.25
    assert budget.settle(0.25, -5, float("nan"), PRICES) == 0.25  # a negative or NaN usage refunds nothing
    assert budget.spent == Spend(4, 0, 0, 0.75) and budget.held == 0.0


def test_max_requests_and_max_cost_stop_the_budget_only_when_nothing_in_flight_could_make_room():
    by_requests = Budget(max_requests=1)
    assert by_requests.reserve_now(0.0) and not by_requests.reserve_now(0.0)
    assert by_requests.stopped.startswith("max_requests reached")
    by_cost = Budget(max_cost=1.0)
    assert by_cost.reserve_now(0.75) and not by_cost.reserve_now(0.5)
    assert not by_cost.stopped  # the request in flight may settle below its worst case
    by_cost.settle(0.75, 0, 0, PRICES)
    assert by_cost.reserve_now(0.5)
    by_cost.settle(0.5, 500, 0, PRICES)
    assert not by_cost.reserve_now(0.75) and by_cost.stopped.startswith("max_cost reached")


def test_a_waiting_reservation_goes_through_once_the_request_in_flight_settles():
    async def scenario() -> Spend:
        budget = Budget(max_cost=1.0)
        assert budget.reserve_now(0.75)
        waiting = asyncio.create_task(budget.reserve(0.5))
        await asyncio.sleep(0)
        assert not waiting.done()
        budget.refund(0.75)
        assert await waiting
        return budget.spent

    assert asyncio.run(scenario()) == Spend(2, 0, 0, 0.0)


def test_spends_add_up_field_by_field():
    assert Spend(1, 2, 3, 0.5) + Spend(4, 5, 6, 0.25) == Spend(5, 7, 9, 0.75)
