"""Which provider failures are worth another attempt, and how long to wait.

litellm maps every provider's errors onto the OpenAI exception family; we
classify by class name along the MRO (most specific first), so the table is
data, not an if/elif chain, and litellm's subclassing (ContextWindowExceeded
is a BadRequest) resolves itself."""
from __future__ import annotations

import email.utils
import re
import time
from dataclasses import dataclass

# class name -> (retryable, kind)
FAILURE_KINDS: dict[str, tuple[bool, str]] = {
    "RateLimitError": (True, "rate_limit"),
    "Timeout": (True, "timeout"),
    "APITimeoutError": (True, "timeout"),
    "APIConnectionError": (True, "connection"),
    "InternalServerError": (True, "server_error"),
    "ServiceUnavailableError": (True, "server_error"),
    "BadGatewayError": (True, "server_error"),
    "APIResponseValidationError": (True, "malformed"),
    "MalformedResponse": (True, "malformed"),
    "JSONDecodeError": (True, "malformed"),
    "ContextWindowExceededError": (False, "context_length"),
    "AuthenticationError": (False, "auth"),
    "PermissionDeniedError": (False, "auth"),
    "NotFoundError": (False, "not_found"),
    "ContentPolicyViolationError": (False, "content_policy"),
    "UnsupportedParamsError": (False, "bad_request"),
    "UnprocessableEntityError": (False, "bad_request"),
    "BadRequestError": (False, "bad_request"),
}

BACKOFF_MAX_S = 30.0


class MalformedResponse(Exception):
    """The provider answered 200 with something that is not a usable completion."""


@dataclass(frozen=True)
class Failure:
    retryable: bool
    kind: str
    retry_after_s: float | None
    reason: str


def _status_kind(status: int | None) -> tuple[bool, str] | None:
    if status is None:
        return None
    if status == 429:
        return True, "rate_limit"
    if status >= 500 or status in (408, 409):
        return True, "server_error"
    if 400 <= status < 500:
        return False, "bad_request"
    return None


def classify(exc: BaseException) -> Failure:
    verdict = None
    for cls in type(exc).__mro__:
        verdict = FAILURE_KINDS.get(cls.__name__)
        if verdict:
            break
    verdict = verdict or _status_kind(getattr(exc, "status_code", None)) or (False, "internal")
    return Failure(verdict[0], verdict[1], retry_after(exc), _reason(exc))


def _headers(exc: BaseException):
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
    return headers or {}


def retry_after(exc: BaseException) -> float | None:
    """Seconds from Retry-After / retry-after-ms (seconds or HTTP date), if any."""
    headers = _headers(exc)
    try:
        millis = headers.get("retry-after-ms")
        if millis is not None:
            return max(0.0, float(millis) / 1000.0)
        value = headers.get("retry-after")
    except AttributeError:
        return None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


_SECRET_LIKE = re.compile(r"\b(sk|pk|rk|key)-[A-Za-z0-9_\-]{6,}")
_LITELLM_PREFIX = re.compile(r"^(litellm\.\w+:\s*)+(\w+Error:\s*)?")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = _LITELLM_PREFIX.sub("", text)
    return _SECRET_LIKE.sub("[redacted]", text)[:500]


def redact(text: str, secrets: tuple[str | None, ...]) -> str:
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text
