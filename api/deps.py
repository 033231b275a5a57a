"""Dependency markers for route handlers."""

from __future__ import annotations

from typing import TypeAlias

from litestar.di import NamedDependency

from api.bootstrap import Services

# Handlers ask for the running services by name, explicitly (Litestar 3 drops
# dependencies inferred from a bare parameter type).
ServicesDep: TypeAlias = NamedDependency[Services]
