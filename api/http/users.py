"""Users, grants, maker-checker approvals and API tokens over HTTP."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.exceptions import (
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_202_ACCEPTED

from api.http.audit import actor_of
from api.http.auth import AUTHENTICATED, needs
from api.http.deps import ApprovalsDep, GrantsDep, IdentityDep, RowId
from api.http.openapi import errors
from archiver.core.errors import AccountNotFound
from archiver.identity.models import ApiToken, Approval, Grant
from archiver.identity.services import (
    Permission,
    Principal,
    Role,
)

Caller = Request[Principal, Any, Any]


class UserIn(msgspec.Struct, forbid_unknown_fields=True):
    username: str
    password: str


class GrantIn(msgspec.Struct, forbid_unknown_fields=True):
    role: str
    account_id: str | None = None


class GrantOut(msgspec.Struct):
    role: str
    account_id: str | None
    granted_at: datetime


class UserOut(msgspec.Struct):
    id: str
    username: str
    grants: list[GrantOut]
    mfa_enrolled: bool
    locked: bool
    disabled: bool


class ApprovalOut(msgspec.Struct):
    id: int
    kind: str
    status: str
    permission: str
    request: dict[str, Any]
    requested_by: str
    requested_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    reason: str | None


class DecisionIn(msgspec.Struct, forbid_unknown_fields=True):
    approve: bool
    reason: str | None = None


class TokenIn(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    scopes: list[str]
    days: int = 30


class TokenOut(msgspec.Struct):
    id: str
    prefix: str
    name: str
    scopes: list[str]
    expires_at: datetime
    revoked: bool
    token: str | None = None


def _approval(approval: Approval) -> ApprovalOut:
    return ApprovalOut(
        approval.id,
        approval.kind,
        approval.status,
        approval.permission,
        msgspec.json.decode(approval.payload),
        approval.requested_by,
        approval.requested_at,
        approval.decided_by,
        approval.decided_at,
        approval.reason,
    )


def _role(name: str) -> Role:
    try:
        return Role(name)
    except ValueError:
        raise ValidationException(f"unknown role {name!r}") from None


def _token(token: ApiToken, secret: str | None = None) -> TokenOut:
    return TokenOut(
        token.id,
        token.prefix,
        token.name,
        token.scopes.split(","),
        token.expires_at,
        token.revoked_at is not None,
        secret,
    )


class UsersController(Controller):
    """User administration (admins) and maker-checker decisions."""

    path = "/api/v1"
    tags = ["users"]  # noqa: RUF012  (Litestar reads this class attribute)

    @get("/users", opt=needs(Permission.USERS_MANAGE))
    async def list_users(self, identity: IdentityDep) -> list[UserOut]:
        """Every user with their active grants."""
        return [
            UserOut(
                one.user.id,
                one.user.username,
                [GrantOut(g.role, g.account_id, g.granted_at) for g in one.grants],
                one.user.mfa_enrolled_at is not None,
                one.locked,
                one.user.disabled,
            )
            for one in await identity.user_list()
        ]

    @post(
        "/users",
        status_code=HTTP_201_CREATED,
        opt=needs(Permission.USERS_MANAGE),
        responses=errors(409),
    )
    async def create_user(
        self, request: Caller, data: JSONBody[UserIn], identity: IdentityDep
    ) -> UserOut:
        """Create a user with no roles; grant them separately."""
        actor = actor_of(request, Permission.USERS_MANAGE)
        user = await identity.add_user(actor, data.username, data.password)
        return UserOut(user.id, user.username, [], False, False, False)

    @post(
        "/users/{user_id:str}/grants",
        opt=needs(Permission.USERS_MANAGE),
        responses={
            HTTP_201_CREATED: ResponseSpec(GrantOut, description="Granted at once."),
            HTTP_202_ACCEPTED: ResponseSpec(
                ApprovalOut, description="Requested: a second admin decides."
            ),
        }
        | errors(409),
    )
    async def grant(
        self,
        request: Caller,
        user_id: FromPath[str],
        data: JSONBody[GrantIn],
        grants: GrantsDep,
    ) -> Response[GrantOut | ApprovalOut]:
        """Grant a role: at once (201), or as a request for a second admin (202)."""
        role = _role(data.role)
        actor = actor_of(request, Permission.USERS_MANAGE)
        try:
            result = await grants.request(actor, request.user, user_id, role, data.account_id)
        except AccountNotFound:
            raise NotFoundException("no such account") from None
        if isinstance(result, Grant):
            return Response(
                GrantOut(result.role, result.account_id, result.granted_at),
                status_code=HTTP_201_CREATED,
            )
        return Response(_approval(result), status_code=HTTP_202_ACCEPTED)

    @post(
        "/users/{user_id:str}/grants/revoke",
        status_code=HTTP_200_OK,
        opt=needs(Permission.USERS_MANAGE),
    )
    async def revoke(
        self, request: Caller, user_id: FromPath[str], data: JSONBody[GrantIn], grants: GrantsDep
    ) -> dict[str, int]:
        """Revoke a role (revoking needs no second person)."""
        role = _role(data.role)
        actor = actor_of(request, Permission.USERS_MANAGE)
        return {"revoked": await grants.revoke(actor, user_id, role, data.account_id)}

    @post(
        "/users/{user_id:str}/reset-mfa",
        status_code=HTTP_200_OK,
        opt=needs(Permission.USERS_MANAGE),
    )
    async def reset_mfa(
        self, request: Caller, user_id: FromPath[str], identity: IdentityDep
    ) -> dict[str, str]:
        """Forget a user's authenticator; they enrol again at their next sign-in."""
        await identity.forget_mfa(actor_of(request, Permission.USERS_MANAGE), user_id)
        return {"status": "reset"}

    @get("/approvals", opt=needs(Permission.GRANTS_APPROVE))
    async def approvals(
        self, approvals: ApprovalsDep, status: FromQuery[Literal["pending"]] = "pending"
    ) -> list[ApprovalOut]:
        """Maker-checker requests waiting for a decision (only those are listed)."""
        return [_approval(a) for a in await approvals.pending_list()]

    @post(
        "/approvals/{approval_id:int}/decision",
        status_code=HTTP_200_OK,
        opt=needs(Permission.GRANTS_APPROVE),
        responses=errors(409),
    )
    async def decide(
        self,
        request: Caller,
        approval_id: RowId,
        data: JSONBody[DecisionIn],
        grants: GrantsDep,
    ) -> ApprovalOut:
        """Approve or reject a request; the maker can never decide their own."""
        actor = actor_of(request, Permission.GRANTS_APPROVE)
        approval = await grants.decide(
            actor, request.user, approval_id, approve=data.approve, reason=data.reason
        )
        return _approval(approval)


class TokensController(Controller):
    """A signed-in user's own API tokens."""

    path = "/api/v1/tokens"
    tags = ["tokens"]  # noqa: RUF012  (Litestar reads this class attribute)

    @get("/", opt={"permission": AUTHENTICATED})
    async def list_tokens(self, request: Caller, identity: IdentityDep) -> list[TokenOut]:
        """The caller's tokens (never their secrets)."""
        return [_token(t) for t in await identity.token_list(request.user.user_id)]

    @post("/", status_code=HTTP_201_CREATED, opt={"permission": AUTHENTICATED})
    async def create_token(
        self, request: Caller, data: JSONBody[TokenIn], identity: IdentityDep
    ) -> TokenOut:
        """Issue a token for the caller; the secret is in this answer only.

        Only a console session can mint tokens (a token cannot mint another), and a
        token's scopes can only be permissions the caller holds.
        """
        caller = request.user
        if caller.via != "session":
            raise PermissionDeniedException("tokens are created from a signed-in session")
        try:
            scopes = frozenset(Permission(s) for s in data.scopes)
        except ValueError:
            raise ValidationException("unknown scope") from None
        new = await identity.issue_token(
            actor_of(request),
            caller.user_id,
            name=data.name,
            scopes=scopes,
            lifetime=timedelta(days=data.days),
        )
        return TokenOut(
            new.id, new.prefix, new.name, list(new.scopes), new.expires_at, False, new.secret
        )

    @post("/{token_id:str}/revoke", status_code=HTTP_200_OK, opt={"permission": AUTHENTICATED})
    async def revoke_token(
        self, request: Caller, token_id: FromPath[str], identity: IdentityDep
    ) -> TokenOut:
        """Revoke one of the caller's tokens, effective at once."""
        token = await identity.withdraw_token(
            actor_of(request), token_id, owner=request.user.user_id
        )
        return _token(token)
