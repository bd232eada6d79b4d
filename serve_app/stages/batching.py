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
    thread, one call at a time. A batch takes up to `max_batch_size` queued items; when it starts with a
    single item it waits up to `wait_s` for more (what @serve.batch does for every batch). If the call
    raises, every item of that batch gets the exception."""

    def __init__(self, run_batch: Callable[[list[Item]], Sequence[Result]], max_batch_size: int, wait_s: float):
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError("max_batch_size must be >= 1 and wait_s >= 0")
        self.run_batch, self.max_batch_size, self.wait_s = run_batch, max_batch_size, wait_s
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future]] | None = None
        self._worker: asyncio.Task | None = None

    async def submit(self, item: Item) -> Result:
        if self._worker is None or self._worker.done():  # first call, on the loop that will run the batches
            self._queue = self._queue or asyncio.Queue()
            self._worker = asyncio.create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _next_batch(self) -> list[tuple[Item, asyncio.Future]]:
        batch = [await self._queue.get()]
        while len(batch) < self.max_batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        if len(batch) == 1 and self.wait_s > 0:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except asyncio.TimeoutError:
                    break
        # Callers that gave up (cancelled while queued) are not computed.
        return [(item, future) for item, future in batch if not future.done()]

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
                if not future.done():  # a caller cancelled while its batch ran
                    future.set_result(result)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
            self._worker = None
