"""One error model for the whole API: exception classes carry their HTTP status and error type.

Raised in any stage; Ray re-raises them in the ingress as subclasses of the same class, so
`isinstance` still works there, and the ingress turns them into one JSON shape (OpenAI's):
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import logging
import math


class OCRServiceError(Exception):
    status_code = 500
    error_type = "internal_error"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message, param)
        self.message = message
        self.param = param

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.status_code,
            }
        }


class InvalidRequestError(OCRServiceError):
    status_code = 400
    error_type = "invalid_request_error"


class InvalidImageError(InvalidRequestError):
    error_type = "invalid_image"


class NotFoundError(OCRServiceError):
    status_code = 404
    error_type = "not_found_error"


class ModelOutputError(OCRServiceError):
    """The model's answer cannot be turned into the structure the task promises."""

    status_code = 422
    error_type = "model_output_error"


class InvalidDocumentError(InvalidRequestError):
    error_type = "invalid_document"


class UnsupportedMediaTypeError(OCRServiceError):
    status_code = 415
    error_type = "unsupported_media_type"


class PayloadTooLargeError(OCRServiceError):
    status_code = 413
    error_type = "payload_too_large"


class UnauthorizedError(OCRServiceError):
    status_code = 401
    error_type = "authentication_error"


class ServiceUnavailableError(OCRServiceError):
    """Overload or a stage that is (re)starting: the caller should retry after `retry_after_s`."""

    status_code = 503
    error_type = "service_unavailable"

    def __init__(self, message: str, param: str | None = None, retry_after_s: int = 1):
        super().__init__(message, param)
        self.retry_after_s = retry_after_s


class EngineStoppedError(ServiceUnavailableError):
    """The decoder's engine died (e.g. vLLM's engine core process): this replica can serve nothing more."""


class RequestTimeoutError(OCRServiceError):
    """The request ran past limits.request_timeout_s; its work was cancelled. Retriable."""

    status_code = 504
    error_type = "timeout"


class ClientClosedError(OCRServiceError):
    """The client went away before its request was answered. Nobody gets the answer; the status is
    nginx's 499 so that metrics tell a client that left from a failure of ours."""

    status_code = 499
    error_type = "client_closed_request"


class EngineError(OCRServiceError):
    status_code = 500
    error_type = "engine_error"


class ClientErrorLogFilter(logging.Filter):
    """Ray Serve logs every exception a replica method raises as "Request failed." with its traceback, at
    ERROR. For a 4xx (an unreadable image, a bad parameter: the caller's mistake, already answered with
    a JSON error) that is ~40 lines of alarm per bad upload. This filter turns such a record into one
    INFO line with the status and error type. Not the message: it may quote what the caller sent.
    Server-side errors (5xx, anything not ours) keep their tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, OCRServiceError) and error.status_code < 500 and record.msg == "Request failed.":
            record.msg, record.args = "Request refused with %d %s (the caller got the error).", (
                error.status_code,
                error.error_type,
            )
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


def quiet_client_error_logs(logger_name: str = "ray.serve") -> None:
    """Install ClientErrorLogFilter on Ray Serve's logger in this process (once); called by each stage."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(existing, ClientErrorLogFilter) for existing in logger.filters):
        logger.addFilter(ClientErrorLogFilter())


def _causes(error: BaseException) -> list[BaseException]:
    """The error and what caused it, outermost first: Ray's task-error wrappers (`cause`) and Python's
    `__cause__` (Serve wraps an upstream replica's death in a RayServeException that way)."""
    from ray import exceptions as ray_exceptions

    chain: list[BaseException] = []
    while error is not None and not any(error is seen for seen in chain):
        chain.append(error)
        inner = error.cause if isinstance(error, ray_exceptions.RayTaskError) else None
        error = inner if isinstance(inner, BaseException) else error.__cause__
    return chain


def as_service_error(error: BaseException) -> OCRServiceError:
    """The one exception -> API error mapping. Anything unknown is a 500 without internals leaked."""
    from ray import exceptions as ray_exceptions
    from ray.serve import exceptions as serve_exceptions

    from starlette.requests import ClientDisconnect

    chain = _causes(error)
    for cause in chain:  # an error one of our stages raised on purpose, as it was raised
        if isinstance(cause, OCRServiceError) and not isinstance(cause, ray_exceptions.RayTaskError):
            return cause
    for cause in chain:
        # The client left: mid-body (Starlette), or Serve cancelled the request, which reaches the ingress
        # as a cancelled body read from the proxy or a cancelled stage call.
        if isinstance(cause, (ClientDisconnect, ray_exceptions.TaskCancelledError, serve_exceptions.RequestCancelledError)):
            return ClientClosedError("The client closed the connection before the request was answered.")
        if isinstance(cause, serve_exceptions.BackPressureError):
            retry_after_s = cause.retry_after_s if cause.retry_after_s is not None else 1
            return ServiceUnavailableError("The service is at capacity; retry shortly.", retry_after_s=math.ceil(retry_after_s))
        # A stage's process died (or is restarting) while this request was in it or waited on it.
        if isinstance(
            cause,
            (serve_exceptions.DeploymentUnavailableError, ray_exceptions.RayActorError, ray_exceptions.ObjectLostError),
        ):
            return ServiceUnavailableError("A pipeline stage is restarting; retry shortly.")
        if isinstance(cause, (TimeoutError, ray_exceptions.GetTimeoutError)):
            return RequestTimeoutError("The request timed out inside the pipeline; retry later or with a smaller input.")
    return OCRServiceError("Internal error while processing the request.")


def validation_error(errors: list[dict], skip: int = 1) -> InvalidRequestError:
    """pydantic errors -> one 400 that says what to fix. `skip` drops leading location parts ("body")."""
    if any(item.get("type") == "json_invalid" for item in errors):
        return InvalidRequestError("The request body is not valid JSON.")
    # With unions (a message's content is text or parts) pydantic reports every branch: the deepest
    # location is the one that says what to fix.
    deepest = max(errors, key=lambda item: len(item.get("loc", ())))
    parts = [str(part) for part in deepest.get("loc", ())[skip:] if not _is_union_tag(part)]
    param = ".".join(parts) or None
    return InvalidRequestError(f"{param or 'The request body'}: {deepest.get('msg')}", param=param)


def _is_union_tag(part) -> bool:
    return isinstance(part, str) and ("[" in part or part in ("str", "TextPart", "ImagePart"))
