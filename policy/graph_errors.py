"""What a Graph error code on a send means for the item and for the policy's state.

The same table serves the dispatcher (an error answer to its POST) and the
webhook reactions (a ``failed`` status that arrives later), so that a code
means one thing wherever Meta reports it.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorAction(StrEnum):
    """What to do about one Graph error code."""

    BACKOFF_NUMBER = "backoff_number"  # 130429 throughput: back off the business number
    BACKOFF_PAIR = "backoff_pair"  # 131056 pair rate: back off this recipient (4**n s)
    WINDOW_CLOSED = "window_closed"  # 131047: failed, the window state corrected
    OPTED_OUT = "opted_out"  # 131050: the opt-out recorded in the ledger, then failed
    MARKETING_LIMIT = "marketing_limit"  # 131049: deferred by at least 24 hours
    UNDELIVERABLE = "undeliverable"  # 131026, 130403: failed, never retried
    TEMPLATE_PAUSED = "template_paused"  # 132015: failed, the template's Meta status PAUSED
    TEMPLATE_DISABLED = "template_disabled"  # 132016: failed, the template DISABLED
    TEMPLATE_FAILED = "template_failed"  # 132000-132069: failed
    NUMBER_RESTRICTED = "number_restricted"  # 368, 131031, 131048: stop the number, alert
    RETRY = "retry"  # 4, 80007, 131000, 131016: retried with backoff
    FAILED = "failed"  # anything else: failed, its code and title kept


_BY_CODE: dict[int, ErrorAction] = {
    130429: ErrorAction.BACKOFF_NUMBER,
    131056: ErrorAction.BACKOFF_PAIR,
    131047: ErrorAction.WINDOW_CLOSED,
    131050: ErrorAction.OPTED_OUT,
    131049: ErrorAction.MARKETING_LIMIT,
    131026: ErrorAction.UNDELIVERABLE,
    130403: ErrorAction.UNDELIVERABLE,
    132015: ErrorAction.TEMPLATE_PAUSED,
    132016: ErrorAction.TEMPLATE_DISABLED,
    368: ErrorAction.NUMBER_RESTRICTED,
    131031: ErrorAction.NUMBER_RESTRICTED,
    131048: ErrorAction.NUMBER_RESTRICTED,
    4: ErrorAction.RETRY,
    80007: ErrorAction.RETRY,
    131000: ErrorAction.RETRY,
    131016: ErrorAction.RETRY,
}

# Items that end failed because of what the code says (the rest are deferred or retried).
TERMINAL = frozenset(
    {
        ErrorAction.WINDOW_CLOSED,
        ErrorAction.OPTED_OUT,
        ErrorAction.UNDELIVERABLE,
        ErrorAction.TEMPLATE_PAUSED,
        ErrorAction.TEMPLATE_DISABLED,
        ErrorAction.TEMPLATE_FAILED,
        ErrorAction.NUMBER_RESTRICTED,
        ErrorAction.FAILED,
    }
)


def classify(code: int | None) -> ErrorAction:
    """The action for Graph error ``code`` (``None``: no code, so failed as is)."""
    if code is None:
        return ErrorAction.FAILED
    if code in _BY_CODE:
        return _BY_CODE[code]
    if 132000 <= code <= 132069:
        return ErrorAction.TEMPLATE_FAILED
    return ErrorAction.FAILED
