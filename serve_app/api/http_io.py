"""Request and response plumbing of the HTTP routes: bounded body reading, form fields, SSE events, stream
deadlines, and running a request's pages concurrently."""

from __future__ import annotations

import asyncio
import json
import re

from starlette.requests import Request

from serve_app.errors import InvalidRequestError, PayloadTooLargeError


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refused as soon as it passes the limit (no unbounded buffering)."""
    declared = request.headers.get("content-length", "")
    if re.fullmatch(r"[0-9]{1,18}", declared) and int(declared) > max_bytes:
        raise PayloadTooLargeError(f"The body is {declared} bytes; the limit is {max_bytes} bytes.")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLargeError(f"The body is over the limit of {max_bytes} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def str_field(value) -> str | None:
    return value if isinstance(value, str) else None


async def first_error_cancels_rest(coroutines: list) -> list:
    """Run concurrently, results in order; on the first failure cancel the others and raise it."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            task.cancel()


def int_field(value, name: str) -> int | None:
    if value in (None, ""):
        return None
    text = value.strip() if isinstance(value, str) else ""
    if not re.fullmatch(r"-?[0-9]{1,9}", text):  # ASCII digits: "²".isdigit() is True, int("²") fails
        raise InvalidRequestError(f"{name} must be an integer.", name)
    return int(text)


def openai_finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"  # the repetition guard's stop reads as "stop"


async def next_or_none(chunks, remaining_s: float):
    """The stream's next chunk (None at its end), or TimeoutError once the request's deadline passed."""
    if remaining_s <= 0:
        raise TimeoutError
    try:
        return await asyncio.wait_for(chunks.__anext__(), remaining_s)
    except StopAsyncIteration:
        return None


def sse_event(payload) -> str:
    if isinstance(payload, str):
        data = payload
    elif isinstance(payload, dict):
        data = json.dumps(payload)
    else:
        data = payload.model_dump_json(exclude_none=True)
    return f"data: {data}\n\n"
