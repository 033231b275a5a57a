"""The template registry: each WhatsApp Business Account's message templates and
both of their approvals.

Ours is maker-checker: a draft is created and edited, submitted, then approved
or rejected with a comment by someone who is neither its maker nor its
submitter. Meta's status, quality and category are kept from its webhooks
(``policy.reactions``). Only a template approved by both may be sent.

Templates are the firm's own wording, kept in plaintext. Every step commits
with its audit event (``template.create``, ``template.update``,
``template.submit``, ``template.approve``, ``template.reject``,
``template.meta_status``, ``template.quality``, ``template.category``); a
refused step is recorded as ``denied`` once nothing changed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from archiver.accounts.models import Account
from archiver.audit.services import Actor, AuditLog
from archiver.core.clock import Clock
from archiver.core.db import Writer
from policy.consent import Accounts
from policy.decision import Category, TemplateParameter, TemplateView
from policy.errors import (
    DuplicateTemplate,
    InvalidTemplate,
    SelfApproval,
    TemplateError,
    TemplateNotFound,
    TemplateStateError,
)
from policy.models import MessageTemplate

NAME = re.compile(r"[a-z0-9_]{1,512}")
LANGUAGE = re.compile(r"([a-z]{2,3})(?:[_-]([A-Za-z]{2,4}))?")
PLACEHOLDER = re.compile(r"\{\{\s*([^{}\s]*)\s*\}\}")
NAMED = re.compile(r"[a-z_][a-z0-9_]{0,63}")
PARAMETER_TYPES = frozenset({"text", "number", "currency", "date", "url"})
TEMPLATE_CATEGORIES = (Category.MARKETING, Category.UTILITY, Category.AUTHENTICATION)
COMPONENT_TYPES = frozenset({"HEADER", "BODY", "FOOTER", "BUTTONS"})
MAX_COMMENT_CHARS = 1000
# Meta's template statuses (the ``event`` of message_template_status_update).
META_STATUSES = frozenset(
    {
        "APPROVED",
        "PENDING",
        "REJECTED",
        "PAUSED",
        "DISABLED",
        "IN_APPEAL",
        "FLAGGED",
        "REINSTATED",
        "PENDING_DELETION",
        "DELETED",
        "LIMIT_EXCEEDED",
        "ARCHIVED",
        "LOCKED",
        "UNLOCKED",
    }
)
# A reinstated or unlocked template may be sent again: it is approved.
_META_SAME_AS = {"REINSTATED": "APPROVED", "UNLOCKED": "APPROVED"}
QUALITIES = frozenset({"GREEN", "YELLOW", "RED", "UNKNOWN"})


def meta_language(code: str) -> str:
    """A language code in Meta's form (``en_US``); raise ``InvalidTemplate``."""
    match = LANGUAGE.fullmatch(code.strip())
    if match is None:
        raise InvalidTemplate(f"language {code!r} is not a code like en or en_US")
    language, region = match.groups()
    return f"{language}_{region.upper()}" if region else language


def meta_status(event: str) -> str | None:
    """The status kept for Meta's ``event`` (``None``: not a status we know)."""
    event = event.strip().upper()
    if event not in META_STATUSES:
        return None
    return _META_SAME_AS.get(event, event)


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for part in value.values():
            yield from _strings(part)
    elif isinstance(value, list):
        for part in value:
            yield from _strings(part)


def check_content(
    components: Any, parameters: Any
) -> tuple[list[dict[str, Any]], list[TemplateParameter]]:
    """The components and parameters, checked against each other; raise
    ``InvalidTemplate``. Placeholders are all positional (``{{1}}``, ``{{2}}``…,
    numbered from 1 without gaps) or all named (``{{order_id}}``), and the
    parameters name each exactly once."""
    if not isinstance(components, list) or not components:
        raise InvalidTemplate("components must be a non-empty list, as Meta's API takes them")
    kinds = []
    for component in components:
        kind = component.get("type") if isinstance(component, dict) else None
        if not isinstance(kind, str) or kind.upper() not in COMPONENT_TYPES:
            raise InvalidTemplate(
                f"each component needs a type of {', '.join(sorted(COMPONENT_TYPES))}"
            )
        kinds.append(kind.upper())
    if kinds.count("BODY") != 1:
        raise InvalidTemplate("a template has exactly one BODY component")
    if not isinstance(parameters, list):
        raise InvalidTemplate("parameters must be a list of {name, type}")
    params: list[TemplateParameter] = []
    for parameter in parameters:
        if not isinstance(parameter, dict) or set(parameter) - {"name", "type"}:
            raise InvalidTemplate("each parameter is {name, type}")
        name, kind = parameter.get("name"), parameter.get("type", "text")
        if not isinstance(name, str) or not (name.isdigit() or NAMED.fullmatch(name)):
            raise InvalidTemplate(f"parameter name {name!r} is not a number or a-z0-9_")
        if kind not in PARAMETER_TYPES:
            choices = ", ".join(sorted(PARAMETER_TYPES))
            raise InvalidTemplate(f"parameter {name!r} has type {kind!r}: use one of {choices}")
        params.append(TemplateParameter(name, kind))
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise InvalidTemplate("two parameters share a name")
    used: list[str] = []
    for string in _strings(components):
        used += PLACEHOLDER.findall(string)
    for placeholder in used:
        if not (placeholder.isdigit() or NAMED.fullmatch(placeholder)):
            raise InvalidTemplate(f"placeholder {{{{{placeholder}}}}} is not a number or a-z0-9_")
    distinct = set(used)
    positional = {p for p in distinct if p.isdigit()}
    if positional and positional != distinct:
        raise InvalidTemplate("placeholders are all numbered ({{1}}) or all named, not both")
    if positional and positional != {str(n) for n in range(1, len(positional) + 1)}:
        raise InvalidTemplate("numbered placeholders run from {{1}} without gaps")
    if distinct != set(names):
        missing = sorted(distinct - set(names))
        unused = sorted(set(names) - distinct)
        problems = []
        if missing:
            problems.append(f"placeholders without a parameter: {', '.join(missing)}")
        if unused:
            problems.append(f"parameters no placeholder uses: {', '.join(unused)}")
        raise InvalidTemplate("; ".join(problems))
    return components, params


def _category(value: str) -> Category:
    try:
        category = Category(value.strip().lower())
    except ValueError:
        category = Category.SERVICE
    if category not in TEMPLATE_CATEGORIES:
        choices = ", ".join(c.value for c in TEMPLATE_CATEGORIES)
        raise InvalidTemplate(f"unknown template category {value!r}: use one of {choices}")
    return category


def view(row: MessageTemplate) -> TemplateView:
    """The template as the send rules see it."""
    return TemplateView(
        id=row.id,
        name=row.name,
        language=row.language,
        category=Category(row.category),
        our_status=row.status,
        meta_status=row.meta_status,
        parameters=tuple(
            TemplateParameter(p["name"], p.get("type", "text")) for p in json.loads(row.parameters)
        ),
    )


@dataclass(frozen=True, slots=True)
class TemplateChange:
    """What a Meta webhook changed on a template (for its audit event)."""

    action: str
    before: str | None
    after: str


_REASONS: dict[type[TemplateError], str] = {
    InvalidTemplate: "invalid template",
    DuplicateTemplate: "duplicate template",
    TemplateNotFound: "no such template",
    TemplateStateError: "wrong template status",
    SelfApproval: "maker and checker must differ",
}


def _person(actor: Actor) -> str:
    """Who acts, whichever way they signed in: a user's API token is the user, so
    that maker and checker are compared as people."""
    return actor.id.removesuffix(":token")


def _target(row: MessageTemplate) -> str:
    return f"template:{row.id} waba:{row.waba_id}"


class TemplateRegistry:
    """Creates, edits, submits and decides templates; each step audited with it."""

    def __init__(
        self,
        clock: Clock,
        sessions: async_sessionmaker[AsyncSession],
        writer: Writer,
        audit: AuditLog,
    ) -> None:
        self._clock = clock
        self._sessions = sessions
        self._writer = writer
        self._audit = audit

    async def create(
        self,
        actor: Actor,
        accounts: Accounts,
        account_id: str,
        *,
        name: str,
        language: str,
        category: str,
        components: Any,
        parameters: Any,
    ) -> MessageTemplate:
        """A draft template of ``account_id``'s WhatsApp Business Account, audited
        as ``template.create``; raise ``InvalidTemplate``, ``DuplicateTemplate`` or
        ``TemplateNotFound`` (no such account within ``accounts``), audited as denied."""
        try:
            async with self._writer.transaction() as session:
                waba = await self._waba(session, accounts, account_id)
                if not NAME.fullmatch(name):
                    raise InvalidTemplate(
                        f"template name {name!r} may hold only a-z, 0-9 and _ (at most 512)"
                    )
                code = meta_language(language)
                kind = _category(category)
                components, params = check_content(components, parameters)
                now = self._clock.now()
                row = MessageTemplate(
                    waba_id=waba,
                    name=name,
                    language=code,
                    category=kind.value,
                    components=json.dumps(components, ensure_ascii=False),
                    parameters=json.dumps([{"name": p.name, "type": p.type} for p in params]),
                    status="draft",
                    created_by=_person(actor),
                    created_at=now,
                    updated_at=now,
                )
                existing = await session.scalar(
                    select(MessageTemplate.id).where(
                        MessageTemplate.waba_id == waba,
                        MessageTemplate.name == name,
                        MessageTemplate.language == code,
                    )
                )
                if existing is not None:
                    raise DuplicateTemplate(
                        f"template {existing} of this account already is {name!r} in {code}"
                    )
                session.add(row)
                try:
                    await session.flush()
                except IntegrityError:
                    raise DuplicateTemplate(f"{name!r} in {code} already exists") from None
                await self._audited(session, actor, "template.create", row)
        except TemplateError as exc:
            await self._refused(actor, "template.create", f"account:{account_id}", exc)
            raise
        return row

    async def update(
        self,
        actor: Actor,
        accounts: Accounts,
        template_id: int,
        *,
        components: Any = None,
        parameters: Any = None,
        category: str | None = None,
    ) -> MessageTemplate:
        """Edit a draft (or a rejected template, which becomes a draft again),
        audited as ``template.update``."""

        def change(row: MessageTemplate) -> None:
            if row.status not in ("draft", "rejected"):
                raise TemplateStateError(
                    f"template {row.id} is {row.status}: only a draft or a rejected one is edited"
                )
            new_components = json.loads(row.components) if components is None else components
            new_parameters = json.loads(row.parameters) if parameters is None else parameters
            checked, params = check_content(new_components, new_parameters)
            row.components = json.dumps(checked, ensure_ascii=False)
            row.parameters = json.dumps([{"name": p.name, "type": p.type} for p in params])
            if category is not None:
                row.category = _category(category).value
            row.status = "draft"
            row.submitted_by = row.decided_by = row.decision_comment = None

        return await self._step(actor, accounts, template_id, "template.update", change)

    async def submit(self, actor: Actor, accounts: Accounts, template_id: int) -> MessageTemplate:
        """Submit a draft for approval, audited as ``template.submit``."""

        def change(row: MessageTemplate) -> None:
            if row.status != "draft":
                raise TemplateStateError(f"template {row.id} is {row.status}, not a draft")
            row.status = "submitted"
            row.submitted_by = _person(actor)

        return await self._step(actor, accounts, template_id, "template.submit", change)

    async def approve(
        self, actor: Actor, accounts: Accounts, template_id: int, comment: str = ""
    ) -> MessageTemplate:
        """Approve a submitted template, audited as ``template.approve``; raise
        ``SelfApproval`` when ``actor`` made or submitted it."""
        return await self._decide(actor, accounts, template_id, "approved", comment)

    async def reject(
        self, actor: Actor, accounts: Accounts, template_id: int, comment: str
    ) -> MessageTemplate:
        """Reject a submitted template with a comment, audited as ``template.reject``."""
        return await self._decide(actor, accounts, template_id, "rejected", comment)

    async def _decide(
        self, actor: Actor, accounts: Accounts, template_id: int, outcome: str, comment: str
    ) -> MessageTemplate:
        comment = comment.strip()

        def change(row: MessageTemplate) -> None:
            if row.status != "submitted":
                raise TemplateStateError(f"template {row.id} is {row.status}, not submitted")
            if _person(actor) in (row.created_by, row.submitted_by):
                raise SelfApproval(
                    f"template {row.id} was made or submitted by {_person(actor)}: "
                    "another person decides"
                )
            if outcome == "rejected" and not comment:
                raise InvalidTemplate("a rejection needs a comment saying why")
            if len(comment) > MAX_COMMENT_CHARS:
                raise InvalidTemplate(f"the comment is longer than {MAX_COMMENT_CHARS} characters")
            row.status = outcome
            row.decided_by = _person(actor)
            row.decision_comment = comment or None

        action = "template.approve" if outcome == "approved" else "template.reject"
        return await self._step(actor, accounts, template_id, action, change)

    async def _step(
        self, actor: Actor, accounts: Accounts, template_id: int, action: str, change: Any
    ) -> MessageTemplate:
        try:
            async with self._writer.transaction() as session:
                row = await self._get(session, accounts, template_id, lock=True)
                change(row)
                row.updated_at = self._clock.now()
                await session.flush()
                await self._audited(session, actor, action, row)
        except TemplateError as exc:
            await self._refused(actor, action, f"template:{template_id}", exc)
            raise
        return row

    async def list_for(
        self, accounts: Accounts, account_id: str | None = None
    ) -> list[MessageTemplate]:
        """The templates of the WhatsApp Business Accounts of ``accounts`` (narrowed
        to ``account_id``), by name and language."""
        async with self._sessions() as session:
            query = select(MessageTemplate).order_by(MessageTemplate.name, MessageTemplate.language)
            wabas = await self._wabas(session, accounts)
            if account_id is not None:
                account = await session.get(Account, account_id)
                wanted = {account.waba_id} if account and account.waba_id else set()
                wabas = wanted if wabas is None else wabas & wanted
            if wabas is not None:
                query = query.where(MessageTemplate.waba_id.in_(wabas))
            return list(await session.scalars(query))

    async def get(self, accounts: Accounts, template_id: int) -> MessageTemplate:
        """One template within ``accounts``; raise ``TemplateNotFound``."""
        async with self._sessions() as session:
            return await self._get(session, accounts, template_id)

    @staticmethod
    async def views(session: AsyncSession, template_ids: Iterable[int]) -> dict[int, TemplateView]:
        """The templates of ``template_ids`` as the send rules see them, in one query."""
        wanted = set(template_ids)
        if not wanted:
            return {}
        rows = await session.scalars(select(MessageTemplate).where(MessageTemplate.id.in_(wanted)))
        return {row.id: view(row) for row in rows}

    # -- Meta's webhooks, in the caller's transaction (policy.reactions) --

    @staticmethod
    async def find_in(
        session: AsyncSession,
        *,
        meta_template_id: str | None,
        waba_id: str | None,
        name: str | None,
        language: str | None,
    ) -> MessageTemplate | None:
        """The template Meta's webhook names: by Meta's id, else by (WABA, name,
        language), when either matches."""
        if meta_template_id:
            found = await session.scalar(
                select(MessageTemplate).where(MessageTemplate.meta_template_id == meta_template_id)
            )
            if found is not None:
                return found
        if not (waba_id and name and language):
            return None
        try:
            code = meta_language(language)
        except InvalidTemplate:
            return None
        found = await session.scalar(
            select(MessageTemplate).where(
                MessageTemplate.waba_id == waba_id,
                MessageTemplate.name == name,
                MessageTemplate.language == code,
            )
        )
        if found is not None and meta_template_id and found.meta_template_id is None:
            found.meta_template_id = meta_template_id[:64]
        return found

    def apply_meta(
        self, row: MessageTemplate, *, status: str | None = None, quality: str | None = None,
        category: str | None = None,
    ) -> list[TemplateChange]:  # fmt: skip
        """Apply what Meta reported to ``row``; what changed (nothing on a replay)."""
        changes = []
        if status is not None and (kept := meta_status(status)) and kept != row.meta_status:
            changes.append(TemplateChange("template.meta_status", row.meta_status, kept))
            row.meta_status = kept
        if quality is not None:
            score = quality.strip().upper()
            if score in QUALITIES and score != row.quality:
                changes.append(TemplateChange("template.quality", row.quality, score))
                row.quality = score
        if category is not None:
            try:
                kind = _category(category).value
            except InvalidTemplate:
                kind = None
            if kind is not None and kind != row.category:
                changes.append(TemplateChange("template.category", row.category, kind))
                row.category = kind
        if changes:
            row.updated_at = self._clock.now()
        return changes

    async def audit_change_in(
        self, session: AsyncSession, actor: Actor, row: MessageTemplate, change: TemplateChange,
        why: str,
    ) -> None:  # fmt: skip
        """Append the event of one change Meta reported, in the caller's transaction."""
        await self._audit.record_in(
            session,
            actor.entry(
                change.action,
                target=_target(row),
                reason=f"{change.before or 'none'} -> {change.after} ({why})",
            ),
        )

    # -- helpers --

    async def _audited(
        self, session: AsyncSession, actor: Actor, action: str, row: MessageTemplate
    ) -> None:
        await self._audit.record_in(
            session,
            actor.entry(
                action,
                target=_target(row),
                reason=f"status {row.status}",
                details={
                    "name": row.name,
                    "language": row.language,
                    "category": row.category,
                    "comment": row.decision_comment,
                },
            ),
        )

    async def _refused(self, actor: Actor, action: str, target: str, exc: TemplateError) -> None:
        await self._audit.record_durable(
            actor.entry(
                action,
                outcome="denied",
                target=target,
                reason=_REASONS[type(exc)],
                details={"error": str(exc)},
            )
        )

    @staticmethod
    async def _wabas(session: AsyncSession, accounts: Accounts) -> set[str] | None:
        if accounts is None:
            return None
        query = select(Account.waba_id).where(
            Account.id.in_(list(accounts)), Account.waba_id.is_not(None)
        )
        return {w for w in await session.scalars(query) if w}

    async def _waba(self, session: AsyncSession, accounts: Accounts, account_id: str) -> str:
        account = await session.get(Account, account_id)
        if account is None or (accounts is not None and account_id not in accounts):
            raise TemplateNotFound(f"no account {account_id!r} within your accounts")
        if not account.waba_id:
            raise InvalidTemplate(
                f"account {account_id} has no WhatsApp Business Account id (waba_id)"
            )
        return account.waba_id

    async def _get(
        self, session: AsyncSession, accounts: Accounts, template_id: int, *, lock: bool = False
    ) -> MessageTemplate:
        row = await session.get(MessageTemplate, template_id, with_for_update=lock)
        wabas = await self._wabas(session, accounts)
        if row is None or (wabas is not None and row.waba_id not in wabas):
            raise TemplateNotFound(f"no template {template_id} within your accounts")
        return row
