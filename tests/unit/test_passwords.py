"""The password policy (NIST SP 800-63B), case by case."""

from __future__ import annotations

import random
import string

import pytest

from archiver.identity.passwords import MAX_LENGTH, password_problem

TOO_EASY = "this password is too easy to guess"
LONGEST = "".join(random.Random(7).choices(string.ascii_letters + string.digits, k=MAX_LENGTH))


@pytest.mark.parametrize(
    ("password", "username", "problem"),
    [
        # Length, and nothing about composition.
        ("Tr0ub4dor&3", "alice", "passwords need at least 12 characters"),
        (LONGEST, "alice", None),
        (LONGEST + "!", "alice", f"passwords can have at most {MAX_LENGTH} characters"),
        ("x" * (MAX_LENGTH - 2) + "yz", "alice", TOO_EASY),  # long is not enough
        ("correct horse battery staple", "alice", None),  # lower case and spaces only
        ("vintage harbour lantern", "alice", None),
        ("9146 0251 7783 4420", "alice", None),  # digits only, but random
        ("Ärger über Öffnungszeiten", "alice", None),  # not ASCII
        # Whitespace and repetition.
        (" " * 12, "alice", "a password cannot be only whitespace"),
        ("\t \n " * 4, "alice", "a password cannot be only whitespace"),
        ("aaaaaaaaaaaa", "alice", "a password cannot be one character or sequence repeated"),
        ("abcabcabcabc", "alice", "a password cannot be one character or sequence repeated"),
        ("x7Q!" * 5, "alice", "a password cannot be one character or sequence repeated"),
        # The username, alone or inside.
        ("alice.walker", "alice.walker", "a password cannot contain the username"),
        ("my name is Alice.Walker!", "alice.walker", "a password cannot contain the username"),
        # Common and breached passwords, words and patterns (zxcvbn's dictionaries).
        ("password1234", "alice", f"{TOO_EASY}: this is a very common password"),
        ("iloveyou1234567", "alice", f"{TOO_EASY}: this is similar to a commonly used password"),
        ("qwertyuiop123", "alice", f"{TOO_EASY}: this is a very common password"),
        ("123456789012", "alice", f"{TOO_EASY}: this is similar to a commonly used password"),
        ("strongroom2025", "alice", TOO_EASY),  # the service's own name
        ("Password2025!", "alice", TOO_EASY),
    ],
)
def test_password_policy(password: str, username: str, problem: str | None) -> None:
    found = password_problem(password, username)
    if problem is None or problem != TOO_EASY:
        assert found == problem
    else:
        assert found is not None
        assert found.startswith(TOO_EASY)
