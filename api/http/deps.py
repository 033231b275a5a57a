"""Dependency and parameter markers for route handlers."""

from __future__ import annotations

from typing import Annotated, TypeAlias

from litestar.di import NamedDependency
from litestar.params import PathParameter

from api.bootstrap import Services

# Handlers ask for the running services by name, explicitly (Litestar 3 drops
# dependencies inferred from a bare parameter type).
ServicesDep: TypeAlias = NamedDependency[Services]

# A row id in a path: the databases' 64-bit integer keys, so that a larger number
# is a clear 400 rather than an overflow inside the driver.
RowId: TypeAlias = Annotated[int, PathParameter(ge=1, le=2**63 - 1)]
