"""The console's outbound pages: compose and check, the sender's items, the
supervisors' hold queue, a contact's consent ledger and the templates.

Every page reads and acts through the policy services as the HTTP API does, with
the same visibility: a sender sees their own items, a supervisor (``outbox.approve``
on the item's account) every item of that account.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any, TypeAlias

from litestar import Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath
from litestar.response import Template

from api.console.pages import Page, _form, _page, _see, context
from api.http.audit import actor_of
from api.http.deps import AccountsDep, OutboxDep, RecordsDep
from api.http.outbox import supervised, visible_item
from archiver.identity.services import Permission
from policy.consent import ConsentLedger
from policy.decision import ContentKind, Decision, Source
from policy.errors import (
    IdempotencyConflict,
    InvalidMessage,
    OutboxError,
    StateConflict,
    TemplateNotFound,
    UnknownTemplate,
)
from policy.models import MessageTemplate
from policy.outbox import MessageContent, SendRequest
from policy.templates import TemplateRegistry

# The two services only these pages use, provided here by name like api.http.deps's.
ConsentDep: TypeAlias = NamedDependency[ConsentLedger]
TemplatesDep: TypeAlias = NamedDependency[TemplateRegistry]


def _consent(state: State) -> ConsentLedger:
    ledger: ConsentLedger = state.services.consent
    return ledger


def _templates(state: State) -> TemplateRegistry:
    registry: TemplateRegistry = state.services.templates
    return registry


CONSENT = {"consent": Provide(_consent, sync_to_thread=False)}
TEMPLATES = {"templates": Provide(_templates, sync_to_thread=False)}
COMPOSE_FIELDS = ("account_id", "to", "kind", "text", "template_id", "idempotency_key")


@dataclass(frozen=True, slots=True)
class TemplateChoice:
    """A template as the compose form offers it: its body and its variables."""

    id: int
    name: str
    language: str
    category: str
    status: str
    meta_status: str | None
    quality: str | None
    body: str
    variables: tuple[tuple[str, str], ...]  # (name, type)

    @property
    def sendable(self) -> bool:
        return self.status == "approved" and self.meta_status == "APPROVED"


def _choice(row: MessageTemplate) -> TemplateChoice:
    components = json.loads(row.components)
    body = " ".join(
        c.get("text", "") for c in components if isinstance(c, dict) and c.get("type") == "BODY"
    )
    variables = tuple((p["name"], p.get("type", "text")) for p in json.loads(row.parameters))
    return TemplateChoice(
        row.id,
        row.name,
        row.language,
        row.category,
        row.status,
        row.meta_status,
        row.quality,
        body,
        variables,
    )


# --- Compose ----------------------------------------------------------------------------


async def _compose_page(
    request: Page,
    accounts: AccountsDep,
    templates: TemplatesDep,
    values: dict[str, str],
    variables: dict[str, str] | None = None,
    *,
    decision: Decision | None = None,
    error: str | None = None,
    status: int = 200,
) -> Template:
    allowed = request.user.accounts_for(Permission.OUTBOX_SEND)
    listed = await accounts.listed(allowed)
    if not values["account_id"] and len(listed) == 1:
        values["account_id"] = listed[0].id
    choices: list[TemplateChoice] = []
    if values["account_id"]:
        rows = await templates.list_for(allowed, values["account_id"])
        choices = [_choice(row) for row in rows]
    chosen = next((c for c in choices if str(c.id) == values["template_id"]), None)
    return Template(
        "compose.html",
        context=context(
            request,
            accounts=listed,
            values=values,
            templates=choices,
            chosen=chosen,
            variables=variables or {},
            decision=decision,
            error=error,
        ),
        status_code=status,
    )


def _fresh(values: dict[str, str]) -> dict[str, str]:
    """The form's values with an idempotency key: a new one for a new message, the
    same one across Check and Send (so a double submit makes one item)."""
    if not values.get("idempotency_key"):
        values["idempotency_key"] = "console-" + secrets.token_urlsafe(18)
    values.setdefault("kind", "text")
    values["kind"] = values["kind"] or ("template" if values.get("template_id") else "text")
    return values


@get("/compose", dependencies=TEMPLATES, **_page(Permission.OUTBOX_SEND))
async def compose_page(request: Page, accounts: AccountsDep, templates: TemplatesDep) -> Template:
    """Compose a message: from which number, to whom, free text or a template."""
    values = {n: request.query_params.get(n, "").strip() for n in COMPOSE_FIELDS}
    return await _compose_page(request, accounts, templates, _fresh(values))


def _request(values: dict[str, str], variables: dict[str, str], chosen: Any) -> SendRequest:
    if values["kind"] == "template":
        if chosen is None:
            raise InvalidMessage("choose a template")
        content = MessageContent(
            kind=ContentKind.TEMPLATE,
            template=chosen.name,
            language=chosen.language,
            variables=variables,
        )
    else:
        content = MessageContent(kind=ContentKind.TEXT, text=values["text"])
    return SendRequest(
        account_id=values["account_id"],
        to=values["to"],
        content=content,
        idempotency_key=values["idempotency_key"],
        source=Source.AGENT,
    )


@post("/compose", dependencies=TEMPLATES, **_page(Permission.OUTBOX_SEND))
async def compose(
    request: Page, accounts: AccountsDep, templates: TemplatesDep, outbox: OutboxDep
) -> Response[Any]:
    """``Check``: the decision the message would get now, every reason; ``Send``:
    submit it and show its item."""
    form = await request.form()
    values = _fresh(await _form(request, *COMPOSE_FIELDS, "action"))
    action = values.pop("action")
    allowed = request.user.accounts_for(Permission.OUTBOX_SEND)
    chosen = None
    variables: dict[str, str] = {}
    if values["kind"] == "template" and values["template_id"].isdigit():
        try:
            chosen = _choice(await templates.get(allowed, int(values["template_id"])))
        except TemplateNotFound:
            chosen = None  # not found or not visible: the form says "choose a template"
        if chosen is not None:
            for name, _ in chosen.variables:
                value = form.get(f"var_{chosen.id}_{name}")
                variables[name] = value.strip() if isinstance(value, str) else ""

    async def again(error: str | None, status: int, decision: Decision | None = None) -> Template:
        return await _compose_page(
            request,
            accounts,
            templates,
            values,
            variables,
            decision=decision,
            error=error,
            status=status,
        )

    if action not in ("check", "send"):
        return await again("Choose Check or Send.", 400)
    if not request.user.allows(Permission.OUTBOX_SEND, values["account_id"]):
        return await again("Choose the business number to send from.", 400)
    actor = actor_of(request, Permission.OUTBOX_SEND)
    refused = "Not sent" if action == "send" else "Not checked"
    try:
        send = _request(values, variables, chosen)
        if action == "check":
            decision = await outbox.preview(actor, request.user.user_id, send)
            return await again(None, 200, decision)
        item = await outbox.submit(actor, request.user.user_id, send)
    except (InvalidMessage, UnknownTemplate) as exc:
        return await again(f"{refused}: {exc}.", 400)
    except IdempotencyConflict as exc:
        return await again(f"{refused}: {exc}. Start a new message.", 409)
    return _see(f"/outbox/{item.id}")


# --- The sender's items --------------------------------------------------------------------


@get("/outbox", **_page(Permission.OUTBOX_SEND))
async def sent_page(request: Page, outbox: OutboxDep) -> Template:
    """The caller's own items, newest first, with their state and decision."""
    items = await outbox.list(
        request.user.accounts_for(Permission.OUTBOX_SEND),
        sender_id=request.user.user_id,
        limit=100,
    )
    return Template("outbox.html", context=context(request, items=items))


@get("/outbox/{item_id:str}", **_page(Permission.OUTBOX_SEND))
async def item_page(request: Page, item_id: FromPath[str], outbox: OutboxDep) -> Template:
    """One item: its content, its decision's reasons and every move it made."""
    view = await visible_item(request.user, outbox, item_id)
    return Template(
        "outbox_item.html",
        context=context(
            request,
            item=view,
            may_review=view.state == "held"
            and view.sender_id != request.user.user_id
            and request.user.allows(Permission.OUTBOX_APPROVE, view.account_id),
        ),
    )


# --- The hold queue --------------------------------------------------------------------------


async def _review_page(
    request: Page, outbox: OutboxDep, *, error: str | None = None, status: int = 200
) -> Template:
    supervised = request.user.accounts_for(Permission.OUTBOX_APPROVE)
    held = await outbox.list(supervised, state="held", limit=100)
    items = [await outbox.get(supervised, view.id, content=True) for view in held]
    notice = {"approved": "Approved: it is decided again and sent.", "rejected": "Rejected."}
    return Template(
        "review.html",
        context=context(
            request,
            items=items,
            error=error,
            notice=notice.get(request.query_params.get("done", "")),
        ),
        status_code=status,
    )


@get("/review", **_page(Permission.OUTBOX_APPROVE))
async def review_page(request: Page, outbox: OutboxDep) -> Template:
    """Held items of the accounts the caller supervises, with content and reasons."""
    return await _review_page(request, outbox)


@post("/review/{item_id:str}", **_page(Permission.OUTBOX_APPROVE))
async def review(request: Page, item_id: FromPath[str], outbox: OutboxDep) -> Response[Any]:
    """Approve or reject a held item with a comment; nobody decides their own."""
    form = await _form(request, "decision", "comment")
    if form["decision"] not in ("approve", "reject"):
        return await _review_page(request, outbox, error="Choose approve or reject.", status=400)
    await supervised(request.user, outbox, item_id)
    actor = actor_of(request, Permission.OUTBOX_APPROVE)
    decide = outbox.approve if form["decision"] == "approve" else outbox.reject
    try:
        await decide(actor, request.user.user_id, item_id, form["comment"])
    except StateConflict as exc:
        return await _review_page(request, outbox, error=f"Not done: {exc}.", status=409)
    except OutboxError as exc:  # a missing comment: refused, and audited, by the service
        return await _review_page(request, outbox, error=f"Not done: {exc}.", status=400)
    done = "approved" if form["decision"] == "approve" else "rejected"
    return _see(f"/review?done={done}")


# --- Consent and templates --------------------------------------------------------------------


@get("/consent", dependencies=CONSENT, **_page(Permission.CONSENT_READ))
async def consent_lookup(request: Page, records: RecordsDep, consent: ConsentDep) -> Response[Any]:
    """Find a contact's consent ledger by phone number."""
    phone = request.query_params.get("phone", "").strip()
    if not phone:
        return Template("consent.html", context=context(request, entries=None, phone=""))
    found = await records.contacts_of(phone)
    if not found:
        return Template(
            "consent.html",
            context=context(
                request, entries=None, phone=phone, error="No contact has that number."
            ),
            status_code=404,
        )
    (contact_id,) = found
    return await _ledger(request, consent, contact_id, phone)


@get("/consent/{contact_id:str}", dependencies=CONSENT, **_page(Permission.CONSENT_READ))
async def consent_page(request: Page, contact_id: FromPath[str], consent: ConsentDep) -> Template:
    """A contact's consent ledger: every entry, when, how, category and evidence."""
    return await _ledger(request, consent, contact_id, "")


async def _ledger(request: Page, consent: ConsentDep, contact_id: str, phone: str) -> Template:
    entries = await consent.entries(
        actor_of(request, Permission.CONSENT_READ),
        request.user.accounts_for(Permission.CONSENT_READ),
        contact_id,
    )
    return Template(
        "consent.html",
        context=context(request, entries=entries, contact_id=contact_id, phone=phone),
    )


@get("/templates", dependencies=TEMPLATES, **_page(Permission.TEMPLATES_READ))
async def templates_page(request: Page, templates: TemplatesDep) -> Template:
    """The templates of the caller's accounts, with our status, Meta's and quality."""
    rows = await templates.list_for(request.user.accounts_for(Permission.TEMPLATES_READ))
    return Template(
        "templates.html", context=context(request, templates=[_choice(r) for r in rows])
    )


OUTBOX_PAGES = [
    compose_page,
    compose,
    sent_page,
    item_page,
    review_page,
    review,
    consent_lookup,
    consent_page,
    templates_page,
]
