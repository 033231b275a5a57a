"""What the commands run on this machine share: the operator's name in the audit
trail, and granting a role as the operator (``strongroom users`` and the demo)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from api.bootstrap import Services
from archiver.identity.models import Grant, User
from archiver.identity.services import Role

# The CLI acts with the operator's full local authority (it holds the root key),
# so it is named "cli" in the audit trail and in approvals; a sensitive grant it
# asks for still needs an admin's decision once the first admin exists.
CLI_ACTOR = "cli"


async def grant_as_operator(
    services: Services, session: AsyncSession, user: User, role: Role, account: str | None
) -> str:
    """Grant ``role`` through the grant service as the operator; say what became of it."""
    if account is not None:
        await services.accounts.get(session, account)
    result = await services.grants.grant_as_operator(
        session, user, role, account, operator=CLI_ACTOR
    )
    if isinstance(result, Grant):
        return f"granted {role.value} on {account or 'all accounts'} to {user.username}"
    return f"approval {result.id} requested: an admin must approve {role.value} for {user.username}"
