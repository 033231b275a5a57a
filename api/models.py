"""Collects every context's tables into one metadata, for migrations and the drift check.

A context's tables live in its own ``models.py``; importing each here is what puts
them in ``Base.metadata``. A new context with tables adds its line.
"""

from __future__ import annotations

import archiver.accounts.models
import archiver.audit.models
import archiver.capture.models
import archiver.crypto.models
import archiver.identity.models
import archiver.records.models
import archiver.search.models
import archiver.vault.models
import policy.models
from archiver.core.db import Base

TABLE_MODULES = (
    archiver.accounts.models,
    archiver.audit.models,
    archiver.capture.models,
    archiver.crypto.models,
    archiver.identity.models,
    archiver.records.models,
    archiver.search.models,
    archiver.vault.models,
    policy.models,
)
metadata = Base.metadata
