"""Providers and parameter markers for route handlers.

A handler names each collaborator it uses as a parameter (``identity:
IdentityDep``) and receives only that; nothing hands a handler the whole set of
services. Each provider reads its service from the running application's
``Services``, which start-up opens once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeAlias

from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import PathParameter

from api.bootstrap import Services
from api.settings import Settings
from archiver.accounts.services import AccountService
from archiver.audit.services import AuditLog
from archiver.identity.services import ApprovalService, GrantService, IdentityService
from archiver.imports.services import ChatImporter
from archiver.records.queries import Records
from archiver.records.services import IntegrityAlarm
from archiver.search.queries import ArchiveSearch
from policy.consent import ConsentLedger
from policy.lexicon import Lexicon
from policy.outbox import Outbox
from policy.send_policy import SendPolicies
from policy.templates import TemplateRegistry

# Litestar 3 drops dependencies inferred from a bare parameter type, so each is
# asked for by name, explicitly.
AccountsDep: TypeAlias = NamedDependency[AccountService]
ApprovalsDep: TypeAlias = NamedDependency[ApprovalService]
ArchiveSearchDep: TypeAlias = NamedDependency[ArchiveSearch]
AuditDep: TypeAlias = NamedDependency[AuditLog]
ConsentDep: TypeAlias = NamedDependency[ConsentLedger]
GrantsDep: TypeAlias = NamedDependency[GrantService]
IdentityDep: TypeAlias = NamedDependency[IdentityService]
ImporterDep: TypeAlias = NamedDependency[ChatImporter]
LexiconDep: TypeAlias = NamedDependency[Lexicon]
OutboxDep: TypeAlias = NamedDependency[Outbox]
SendPoliciesDep: TypeAlias = NamedDependency[SendPolicies]
TemplatesDep: TypeAlias = NamedDependency[TemplateRegistry]
RecordsDep: TypeAlias = NamedDependency[Records]
IntegrityAlarmDep: TypeAlias = NamedDependency[IntegrityAlarm]
SettingsDep: TypeAlias = NamedDependency[Settings]

# The composition root itself, for the one route about the whole running
# system (readiness).
ServicesDep: TypeAlias = NamedDependency[Services]

PROVIDED = (
    "accounts",
    "approvals",
    "archive_search",
    "audit",
    "consent",
    "grants",
    "identity",
    "importer",
    "lexicon",
    "outbox",
    "policies",
    "records",
    "settings",
    "templates",
)


def _provider(name: str) -> Callable[[State], Any]:
    def provide(state: State) -> Any:
        return getattr(state.services, name)

    return provide


def providers() -> dict[str, Provide]:
    """The application's dependencies: one provider per service a handler may ask for."""
    provided = {name: Provide(_provider(name), sync_to_thread=False) for name in PROVIDED}
    provided["services"] = Provide(_provider_of_services, sync_to_thread=False)
    provided["integrity_alarm"] = Provide(_integrity_alarm, sync_to_thread=False)
    return provided


def _integrity_alarm(state: State) -> IntegrityAlarm:
    alarm: IntegrityAlarm = state.services.record_reader.alarm
    return alarm


def _provider_of_services(state: State) -> Services:
    services: Services = state.services
    return services


# A row id in a path: the databases' 64-bit integer keys, so that a larger number
# is a clear 400 rather than an overflow inside the driver.
RowId: TypeAlias = Annotated[int, PathParameter(ge=1, le=2**63 - 1)]
