"""Collects every context's tables into one metadata for migrations."""

from __future__ import annotations

import archiver.models  # noqa: F401  (imported for its tables)
import policy.models  # noqa: F401  (imported for its tables)
from archiver.db import Base

metadata = Base.metadata
