"""A caller's search of the archive: scoped to the accounts they may read, audited
before any result is shown."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from archiver.audit.services import Actor, AuditLog
from archiver.records.queries import Accounts, Records, decode_cursor, encode_cursor, narrowed
from archiver.search.services import Filters, Hit, Search


@dataclass(frozen=True, slots=True)
class SearchPage:
    hits: list[Hit]
    next_cursor: str | None


class ArchiveSearch:
    """Runs a caller's search and records it (terms and filters sealed)."""

    def __init__(
        self,
        search: Search,
        records: Records,
        audit: AuditLog,
        lexicon_terms: Callable[[], Awaitable[tuple[str, ...]]],
    ) -> None:
        self._search = search
        self._records = records
        self._audit = audit
        self._lexicon_terms = lexicon_terms

    async def search(
        self,
        actor: Actor,
        accounts: Accounts,
        query: str,
        filters: Filters,
        *,
        account_id: str | None = None,
        contact: str | None = None,
        cursor: str | None = None,
        limit: int = 50,
        asked: dict[str, Any] | None = None,
    ) -> SearchPage:
        """Search within ``accounts`` (narrowed to ``account_id`` and to the contact
        of the phone number ``contact``), then record the search (its terms and
        ``asked``, the filters as given, sealed) before any result is shown.
        Raises ``SearchError`` for a query with nothing searchable."""
        scope = narrowed(accounts, account_id)
        filters = replace(
            filters,
            accounts=scope,
            contact_ids=await self._records.contacts_of(contact),
            lexicon=await self._lexicon_terms() if filters.flagged is not None else (),
        )
        hits, position = await self._search.search(
            query, filters, after=decode_cursor(cursor) if cursor else None, limit=limit
        )
        await self._audit.record_durable(
            actor.entry(
                "archive.search",
                target="records:" + ",".join(str(h.record.id) for h in hits),
                scope=",".join(sorted(scope)) if scope is not None else "all accounts",
                details={"query": query, "filters": asked or {}},
            )
        )
        return SearchPage(hits, encode_cursor(position) if position else None)
