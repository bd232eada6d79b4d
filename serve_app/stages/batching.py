"""Batching for a stage that runs one blocking batch call at a time (the vision tower).

Ray Serve's @serve.batch forms a batch within batch_wait_timeout_s of its first request even while the
previous batch still runs, and queues it behind that one: under load every batch holds only what arrived
in one short window (mean 1.7 images at 16 concurrent requests on the CPU config). Here a batch forms
when the call is free, so everything that arrived while the previous one ran goes into the next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class BatchWhileBusy(Generic[Item, Result]):
    """`await submit(item)` -> the result for that item of `run_batch(items)`, a blocking function run on a
    thread, one call at a time. A batch takes up to `max_batch_size` queued items, in arrival order; when it
    starts with a single item it waits up to `wait_s` for more (what @serve.batch does for every batch).

    With `max_weight`, a batch also holds items whose `weight(item)` add up to at most `max_weight` (an
    image's size, not only the count): the first item that does not fit ends the batch and opens the next
    one, so nothing is reordered or left behind; an item heavier than `max_weight` alone runs alone.

    If the call raises, every item of that batch gets the exception. A result that is an exception
    instance fails only its own item (a call that fails some items and not others)."""

    def __init__(
        self,
        run_batch: Callable[[list[Item]], Sequence[Result | BaseException]],
        max_batch_size: int,
        wait_s: float,
        weight: Callable[[Item], float] | None = None,
        max_weight: float | None = None,
    ):
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError("max_batch_size must be >= 1 and wait_s >= 0")
        if max_weight is not None and (weight is None or max_weight <= 0):
            raise ValueError("max_weight needs a weight function and must be > 0")
        self.run_batch, self.max_batch_size, self.wait_s = run_batch, max_batch_size, wait_s
        self.weight, self.max_weight = weight, max_weight
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future, float]] | None = None
        self._held: tuple[Item, asyncio.Future, float] | None = None  # did not fit the last batch: opens the next
        self._worker: asyncio.Task | None = None

    async def submit(self, item: Item) -> Result:
        if self._worker is None or self._worker.done():  # first call, on the loop that will run the batches
            self._queue = self._queue or asyncio.Queue()
            self._worker = asyncio.create_task(self._run())
        weight = self.weight(item) if self.max_weight is not None else 0.0  # a bad item fails its own caller
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future, weight))
        return await future

    async def _next_batch(self) -> list[tuple[Item, asyncio.Future]]:
        if self._held is not None:
            batch, self._held = [self._held], None
        else:
            batch = [await self._queue.get()]
        total = 0.0 if batch[0][1].done() else batch[0][2]

        def fits(entry: tuple[Item, asyncio.Future, float]) -> bool:
            """Add `entry` if it fits the batch's weight; otherwise hold it for the next batch."""
            nonlocal total
            weight = 0.0 if entry[1].done() else entry[2]  # a cancelled caller weighs nothing
            if self.max_weight is not None and total + weight > self.max_weight:
                self._held = entry
                return False
            batch.append(entry)
            total += weight
            return True

        full = False
        while len(batch) < self.max_batch_size and not self._queue.empty():
            if full := not fits(self._queue.get_nowait()):
                break
        if len(batch) == 1 and self.wait_s > 0 and not full:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
                try:
                    if not fits(await asyncio.wait_for(self._queue.get(), remaining)):
                        break
                except asyncio.TimeoutError:
                    break
        # Callers that gave up (cancelled while queued) are not computed.
        return [(item, future) for item, future, _ in batch if not future.done()]

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                results = await asyncio.to_thread(self.run_batch, [item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"the batch call returned {len(results)} results for {len(batch)} items")
            except Exception as error:  # noqa: BLE001 - every caller of this batch gets the failure
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results):
                if future.done():  # a caller cancelled while its batch ran
                    continue
                if isinstance(result, BaseException):  # this item alone failed
                    future.set_exception(result)
                else:
                    future.set_result(result)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
