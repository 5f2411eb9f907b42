"""Errors that callers of the daemon see, each with its JSON-RPC code: the
one definition of every code the control socket and the MCP server send
(listed under Errors in voicecalld-tools(7)). Messages are sentences a
person can act on. Standard library only: voicecallctl imports this."""

from __future__ import annotations

from typing import Any

# JSON-RPC 2.0's own codes (https://www.jsonrpc.org/specification#error_object).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# voicecalld's, from the range JSON-RPC leaves to servers.
CALL_NOT_FOUND = -32000
LIMIT_REACHED = -32001
NOT_CONNECTED = -32002
PROVIDER_ERROR = -32003
TRANSCRIPT_TIMEOUT = -32004
STORE_FAILED = -32005
TURN_IN_PROGRESS = -32006
TOO_MANY_CONNECTIONS = -32007  # the control socket refuses a connection (control.maxConnections)
SHUTTING_DOWN = -32008


class VoiceCallError(Exception):
    code = INTERNAL_ERROR

    def __init__(self, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data


class InvalidParams(VoiceCallError):
    code = INVALID_PARAMS


class CallNotFound(VoiceCallError):
    code = CALL_NOT_FOUND

    def __init__(self, call_id: object) -> None:
        super().__init__(f"no call with id {call_id!s}; voicecallctl list shows the active calls",
                         {"callId": call_id})


class LimitReached(VoiceCallError):
    code = LIMIT_REACHED


class NotConnected(VoiceCallError):
    code = NOT_CONNECTED


class ProviderError(VoiceCallError):
    """The carrier refused or failed a request. ``provider_code`` is the
    carrier's own error code when it gave one."""

    code = PROVIDER_ERROR

    def __init__(self, message: str, *, provider_code: str | int | None = None,
                 status: int | None = None, retryable: bool = False) -> None:
        data: dict[str, Any] = {}
        if provider_code is not None:
            data["providerCode"] = provider_code
        if status is not None:
            data["httpStatus"] = status
        super().__init__(message, data or None)
        self.provider_code = provider_code
        self.status = status
        self.retryable = retryable


class RateLimited(ProviderError):
    """The carrier refused a request for its rate limit (HTTP 429): it did
    nothing, so the same request may be made again, after ``retry_after``
    seconds when the carrier said (None: it did not)."""

    def __init__(self, message: str, *, provider_code: str | int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, provider_code=provider_code, status=429, retryable=True)
        self.retry_after = retry_after


class TranscriptTimeout(VoiceCallError):
    code = TRANSCRIPT_TIMEOUT


class TurnInProgress(VoiceCallError):
    """A ``continue`` is already waiting for the callee on this call."""

    code = TURN_IN_PROGRESS


class ShuttingDown(VoiceCallError):
    code = SHUTTING_DOWN


class StoreFailed(VoiceCallError):
    """The call log could not be written (disk full, I/O error, closed).
    Nothing that depends on the failed write is acknowledged."""

    code = STORE_FAILED

    def __init__(self, reason: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(f"the call log cannot be written: {reason}", data)
        self.reason = reason
