"""BatchWhileBusy: what queues while a batch runs goes into the next one; results and errors reach their callers."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from serve_app.stages.batching import BatchWhileBusy


class SlowDoubler:
    """A blocking batch call that takes `seconds` and records the batches it got."""

    def __init__(self, seconds: float = 0.05):
        self.seconds, self.batches, self.threads = seconds, [], set()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.threads.add(threading.get_ident())
        time.sleep(self.seconds)
        return [item * 2 for item in items]


def test_arrivals_during_a_batch_form_the_next_batch():
    async def scenario():
        call = SlowDoubler(0.2)
        batcher = BatchWhileBusy(call, max_batch_size=8, wait_s=0.0)
        first = asyncio.create_task(batcher.submit(0))
        rest = []
        for item in range(1, 6):  # arriving one by one while the first batch (one image) runs
            await asyncio.sleep(0.02)
            rest.append(asyncio.create_task(batcher.submit(item)))
        results = await asyncio.gather(first, *rest)
        await batcher.close()
        return call, results

    call, results = asyncio.run(scenario())
    assert results == [0, 2, 4, 6, 8, 10]
    assert call.batches == [[0], [1, 2, 3, 4, 5]]  # not five batches formed while the first one ran
    assert threading.get_ident() not in call.threads  # the blocking call is off the event loop


def test_a_batch_holds_at_most_max_batch_size_in_arrival_order():
    async def scenario():
        call = SlowDoubler(0.01)
        batcher = BatchWhileBusy(call, max_batch_size=3, wait_s=0.0)
        results = await asyncio.gather(*(batcher.submit(item) for item in range(7)))
        await batcher.close()
        return call, results

    call, results = asyncio.run(scenario())
    assert results == [item * 2 for item in range(7)]
    assert call.batches == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_lone_image_waits_for_company_up_to_wait_s():
    async def scenario(wait_s):
        call = SlowDoubler(0.0)
        batcher = BatchWhileBusy(call, max_batch_size=4, wait_s=wait_s)
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(batcher.submit(2))
        await asyncio.gather(first, second)
        await batcher.close()
        return call.batches

    assert asyncio.run(scenario(0.5)) == [[1, 2]]
    assert asyncio.run(scenario(0.0)) == [[1], [2]]


def test_a_failed_batch_fails_its_callers_and_the_next_batch_runs():
    calls = []

    def flaky(items: list[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("device lost")
        return items

    async def scenario():
        batcher = BatchWhileBusy(flaky, max_batch_size=4, wait_s=0.0)
        failed = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        later = await batcher.submit(3)
        await batcher.close()
        return failed, later

    failed, later = asyncio.run(scenario())
    assert [type(error) for error in failed] == [RuntimeError, RuntimeError]
    assert later == 3


def test_a_call_returning_the_wrong_number_of_results_is_an_error_not_a_hang():
    async def scenario():
        batcher = BatchWhileBusy(lambda items: items[:-1], max_batch_size=4, wait_s=0.0)
        with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
            await asyncio.wait_for(asyncio.gather(batcher.submit(1), batcher.submit(2)), 5)
        await batcher.close()

    asyncio.run(scenario())


def test_a_caller_cancelled_while_queued_is_not_computed():
    async def scenario():
        call = SlowDoubler(0.1)
        batcher = BatchWhileBusy(call, max_batch_size=8, wait_s=0.0)
        running = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.02)
        gone = asyncio.create_task(batcher.submit(2))
        kept = asyncio.create_task(batcher.submit(3))
        await asyncio.sleep(0.01)
        gone.cancel()
        results = await asyncio.gather(running, kept)
        await batcher.close()
        return call.batches, results

    batches, results = asyncio.run(scenario())
    assert results == [2, 6]
    assert batches == [[1], [3]]


def test_settings_are_checked():
    with pytest.raises(ValueError):
        BatchWhileBusy(lambda items: items, max_batch_size=0, wait_s=0.0)
    with pytest.raises(ValueError):
        BatchWhileBusy(lambda items: items, max_batch_size=1, wait_s=-1.0)


def run_weighted(sizes: list[int], max_weight: int, max_batch_size: int = 8) -> tuple[list[list[int]], list[int]]:
    """Submit items (their value is their weight) all at once; the batches the call got and the results."""

    async def scenario():
        call = SlowDoubler(0.01)
        batcher = BatchWhileBusy(call, max_batch_size, 0.0, weight=lambda item: item, max_weight=max_weight)
        results = await asyncio.gather(*(batcher.submit(size) for size in sizes))
        await batcher.close()
        return call.batches, results

    return asyncio.run(scenario())


def test_batches_never_exceed_max_weight_and_keep_arrival_order():
    sizes = [3, 4, 2, 5, 1, 1, 6, 2, 3, 4]
    batches, results = run_weighted(sizes, max_weight=7)
    assert results == [size * 2 for size in sizes]
    assert all(sum(batch) <= 7 for batch in batches)
    assert [item for batch in batches for item in batch] == sizes  # nothing reordered, nothing skipped
    # the item that does not fit opens the next batch
    assert batches == [[3, 4], [2, 5], [1, 1], [6], [2, 3], [4]]


def test_an_item_heavier_than_max_weight_runs_alone_and_the_rest_go_on():
    batches, results = run_weighted([1, 20, 2, 30, 3, 1], max_weight=5)
    assert results == [2, 40, 4, 60, 6, 2]
    assert batches == [[1], [20], [2], [30], [3, 1]]


def test_max_batch_size_still_applies_with_a_weight():
    batches, _ = run_weighted([1] * 7, max_weight=100, max_batch_size=3)
    assert batches == [[1, 1, 1], [1, 1, 1], [1]]


def test_a_held_item_waits_no_longer_than_its_turn():
    """The item that did not fit goes first into the very next batch, ahead of later arrivals."""

    async def scenario():
        call = SlowDoubler(0.1)
        batcher = BatchWhileBusy(call, 8, 0.0, weight=lambda item: item, max_weight=10)
        first = asyncio.create_task(batcher.submit(1))
        await asyncio.sleep(0.02)  # the first batch runs; these queue meanwhile
        queued = [asyncio.create_task(batcher.submit(size)) for size in (6, 3, 9, 1)]
        await asyncio.sleep(0.02)
        late = asyncio.create_task(batcher.submit(2))
        await asyncio.gather(first, *queued, late)
        await batcher.close()
        return call.batches

    assert asyncio.run(scenario()) == [[1], [6, 3], [9, 1], [2]]


def test_a_result_that_is_an_exception_fails_only_its_item():
    async def scenario():
        batcher = BatchWhileBusy(
            lambda items: [ValueError(f"bad {item}") if item < 0 else item for item in items], 8, 0.0
        )
        results = await asyncio.gather(*(batcher.submit(item) for item in (1, -2, 3)), return_exceptions=True)
        await batcher.close()
        return results

    first, failed, third = asyncio.run(scenario())
    assert (first, third) == (1, 3)
    assert isinstance(failed, ValueError) and str(failed) == "bad -2"


def test_weight_settings_are_checked():
    with pytest.raises(ValueError):
        BatchWhileBusy(lambda items: items, 1, 0.0, max_weight=10)  # no weight function
    with pytest.raises(ValueError):
        BatchWhileBusy(lambda items: items, 1, 0.0, weight=len, max_weight=0)
