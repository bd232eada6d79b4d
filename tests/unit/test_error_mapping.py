"""The one exception -> API status mapping, including Ray's wrappers around errors from other stages."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest
from ray import exceptions as ray_exceptions
from ray.serve import exceptions as serve_exceptions
from starlette.requests import ClientDisconnect

from serve_app.errors import EngineStoppedError, InvalidImageError, as_service_error, quiet_client_error_logs
from serve_app.api.middleware import RequestMetricsMiddleware


def test_an_upstream_replica_death_is_retriable():
    # Serve's router wraps "the encoder died before finishing what the decoder waited on" like this.
    wrapped = serve_exceptions.RayServeException("Request to deployment 'Decoder' failed because an upstream actor died")
    wrapped.__cause__ = ray_exceptions.ActorDiedError()
    error = as_service_error(wrapped)
    assert error.status_code == 503 and "retry" in error.message
    assert as_service_error(ray_exceptions.ActorDiedError()).status_code == 503
    assert as_service_error(serve_exceptions.DeploymentUnavailableError("Decoder")).status_code == 503


def test_overload_carries_its_retry_after():
    error = as_service_error(serve_exceptions.BackPressureError(num_queued_requests=8, max_queued_requests=8, retry_after_s=2.5))
    assert error.status_code == 503 and error.retry_after_s == 3


def test_a_stage_error_keeps_its_own_status_through_rays_wrapper():
    original = InvalidImageError("The image could not be decoded.")
    wrapped = ray_exceptions.RayTaskError("prepare", "traceback", original).as_instanceof_cause()
    error = as_service_error(wrapped)
    assert error.status_code == 400 and error.message == "The image could not be decoded."


@pytest.mark.parametrize(
    "gone",
    [ClientDisconnect(), ray_exceptions.TaskCancelledError(), serve_exceptions.RequestCancelledError("req-1")],
    ids=["mid-body", "body-read-cancelled-by-serve", "stage-call-cancelled"],
)
def test_a_client_that_leaves_is_a_499_not_an_internal_error(gone):
    error = as_service_error(gone)
    assert (error.status_code, error.error_type) == (499, "client_closed_request")


class _Tally:
    """Stands in for one Ray metric: records the tags of each observation."""

    def __init__(self):
        self.tags = []

    def inc(self, value=1, tags=None):
        self.tags.append(tags)

    def observe(self, value, tags=None):
        self.tags.append(tags)


def test_a_request_cancelled_before_its_answer_counts_as_the_client_leaving():
    # Serve cancels the ingress's task when the HTTP client disconnects while the request is in flight.
    metrics = SimpleNamespace(request_latency_ms=_Tally(), requests=_Tally(), errors=_Tally())

    async def slow_app(scope, receive, send):
        await asyncio.sleep(30)

    async def cancel_in_flight():
        middleware = RequestMetricsMiddleware(slow_app, metrics, ui_path=None)
        task = asyncio.create_task(middleware({"type": "http", "path": "/ocr"}, None, None))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_in_flight())
    assert metrics.requests.tags == [{"route": "/ocr", "status": "499"}]
    assert metrics.errors.tags == [{"error_type": "client_closed_request"}]


def test_timeouts_and_unknown_errors():
    assert as_service_error(TimeoutError()).status_code == 504
    unknown = as_service_error(RuntimeError("secret document text"))
    assert unknown.status_code == 500 and "secret" not in unknown.message


@pytest.mark.parametrize(
    ("error", "level", "traceback"),
    [
        (InvalidImageError("The body is not an image: 'secret words'."), logging.INFO, False),  # the caller's
        (EngineStoppedError("The decoder engine stopped."), logging.ERROR, True),  # ours: 503
        (RuntimeError("CUDA error"), logging.ERROR, True),  # not an API error at all
    ],
)
def test_a_refused_request_is_one_line_in_the_replica_log(caplog, error, level, traceback):
    # What Ray Serve's replica does for any exception a stage method raises.
    logger = logging.getLogger("ray.serve.test-stage")
    quiet_client_error_logs(logger.name)
    quiet_client_error_logs(logger.name)  # each stage calls it; one filter is enough
    assert len(logger.filters) == 1
    with caplog.at_level(logging.DEBUG, logger.name):
        try:
            raise error
        except Exception:
            logger.exception("Request failed.")
    (record,) = caplog.records
    assert record.levelno == level
    assert (record.exc_info is not None) is traceback
    if not traceback:
        assert record.getMessage() == "Request refused with 400 invalid_image (the caller got the error)."
        assert "secret" not in caplog.text and "Traceback" not in caplog.text
