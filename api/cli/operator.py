"""What the commands run on this machine share: the operator's name in the audit
trail, and granting a role as the operator (``strongroom users`` and the demo)."""

from __future__ import annotations

import getpass
from typing import Final

from archiver.audit.services import Actor
from archiver.identity.models import Approval, Grant
from archiver.identity.services import Role

# The CLI acts with the operator's full local authority (it holds the root key),
# so it is named "cli" in the audit trail and in approvals; a sensitive grant it
# asks for still needs an admin's decision once the first admin exists.
CLI_ACTOR = "cli"


def _os_user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return None


CLI: Final = Actor(id=CLI_ACTOR, name=_os_user())
"""The operator, as the services' changes name them (the OS user as its name)."""


def granted(result: Grant | Approval, role: Role, account: str | None, username: str) -> str:
    """What became of a grant asked for as the operator, in a sentence."""
    if isinstance(result, Grant):
        return f"granted {role.value} on {account or 'all accounts'} to {username}"
    return f"approval {result.id} requested: an admin must approve {role.value} for {username}"
