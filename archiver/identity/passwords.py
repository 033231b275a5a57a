"""Which passwords may be set, after NIST SP 800-63B (section 5.1.1.2).

A password needs length, not composition: no rule asks for digits, capitals or
symbols. Refused are passwords that are only whitespace, one character or one
sequence repeated, that contain the username, or that zxcvbn's estimator finds
easy to guess: its dictionaries hold common and breached passwords, words,
names, keyboard walks, sequences and dates, and it is told the username and
the service's name too.
"""

from __future__ import annotations

import re

from zxcvbn import zxcvbn

MIN_LENGTH = 12
MAX_LENGTH = 1024
# zxcvbn's scores run 0 to 4; 3 and up need about 10^8 guesses or more.
MIN_SCORE = 3
# zxcvbn refuses longer input (its cost grows with the square of the length);
# a password this long is scored on its beginning.
_SCORED_LENGTH = 72
_REPEATED = re.compile(r"(.+?)\1+", re.DOTALL)
_SERVICE_WORDS = ("strongroom",)


def password_problem(password: str, username: str) -> str | None:
    """Why ``username`` may not have ``password``, or ``None`` if they may."""
    if len(password) < MIN_LENGTH:
        return f"passwords need at least {MIN_LENGTH} characters"
    if len(password) > MAX_LENGTH:
        return f"passwords can have at most {MAX_LENGTH} characters"
    if not password.strip():
        return "a password cannot be only whitespace"
    if _REPEATED.fullmatch(password):
        return "a password cannot be one character or sequence repeated"
    name = username.strip().lower()
    if name and name in password.lower():
        return "a password cannot contain the username"
    estimate = zxcvbn(password[:_SCORED_LENGTH], user_inputs=[name, *_SERVICE_WORDS])
    if estimate["score"] < MIN_SCORE:
        feedback = estimate["feedback"]
        hint = (feedback["warning"] or " ".join(feedback["suggestions"])).rstrip(".")
        reason = "this password is too easy to guess"
        return f"{reason}: {hint[0].lower()}{hint[1:]}" if hint else reason
    return None
