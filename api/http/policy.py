"""Each account's send policy over HTTP (compliance officers, ``policy.manage``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, Request, get, put
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, JSONBody

from api.http.audit import actor_of
from api.http.auth import needs
from api.http.deps import SendPoliciesDep
from archiver.identity.services import Permission, Principal
from policy.decision import PolicySettings
from policy.send_policy import StoredPolicy

Caller = Request[Principal, Any, Any]


class PolicyOut(msgspec.Struct):
    """An account's send policy; ``version`` 0 is the defaults, never changed."""

    account_id: str
    settings: PolicySettings
    version: int
    updated_by: str | None
    updated_at: datetime | None


def _out(policy: StoredPolicy) -> PolicyOut:
    return PolicyOut(
        policy.account_id, policy.settings, policy.version, policy.updated_by, policy.updated_at
    )


def _managed(request: Caller, account_id: str) -> None:
    if not request.user.allows(Permission.POLICY_MANAGE, account_id):
        raise NotFoundException("no such account")


class PolicyController(Controller):
    """Quiet hours, rates, tiers, caps and consent coverage, per business number."""

    path = "/api/v1/policy"
    tags = ["policy"]  # noqa: RUF012  (Litestar reads this class attribute)

    @get("/{account_id:str}", opt=needs(Permission.POLICY_MANAGE))
    async def get_policy(
        self, request: Caller, account_id: FromPath[str], policies: SendPoliciesDep
    ) -> PolicyOut:
        """The account's send policy."""
        _managed(request, account_id)
        return _out(await policies.get(account_id))

    @put("/{account_id:str}", opt=needs(Permission.POLICY_MANAGE))
    async def put_policy(
        self,
        request: Caller,
        account_id: FromPath[str],
        data: JSONBody[PolicySettings],
        policies: SendPoliciesDep,
    ) -> PolicyOut:
        """Replace the account's send policy (fields left out take their defaults)."""
        _managed(request, account_id)
        actor = actor_of(request, Permission.POLICY_MANAGE)
        return _out(await policies.update(actor, account_id, data))
