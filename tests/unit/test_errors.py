"""The error trees: ``archiver/core/errors.py`` draws every record-core error where it
stands in the tree, and no exception class of ours takes a library's name."""

from __future__ import annotations

import builtins
import importlib
import inspect
import pkgutil
import re
import sys
from types import ModuleType

import asyncpg.exceptions
import httpx
import litestar.exceptions
import msgspec
import sqlalchemy.exc
from cryptography import exceptions as crypto_exceptions

import api
import archiver
import exports
import policy
import retention
from archiver.core import errors
from archiver.core.errors import ArchiverError

OURS = (api, archiver, exports, policy, retention)
LIBRARIES: tuple[ModuleType, ...] = (
    builtins,
    sqlalchemy.exc,
    litestar.exceptions,
    msgspec,
    httpx,
    asyncpg.exceptions,
    crypto_exceptions,
)
# One line of the drawn tree: the guides of its ancestors, its branch, its name.
LINE = re.compile(r"^ {4}((?:[│ ] {3})*)(?:[├└]── )?([A-Z]\w+)")


def _import_all() -> None:
    for package in OURS:
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if ".migrations" not in module.name:
                importlib.import_module(module.name)


def _drawn() -> list[tuple[str, str | None]]:
    """Each class the docstring's tree draws, with the class drawn as its parent."""
    assert errors.__doc__ is not None
    drawn: list[tuple[str, str | None]] = []
    path: list[str] = []  # the names on the way down to the current line
    for line in errors.__doc__.split("::", 1)[1].splitlines():
        found = LINE.match(line)
        if found is None:
            continue
        depth = len(found[1]) // 4 + (1 if "──" in line else 0)
        del path[depth:]
        drawn.append((found[2], path[-1] if path else None))
        path.append(found[2])
    return drawn


def _archiver_errors() -> list[type]:
    found: list[type] = []
    pending: list[type] = [ArchiverError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return [cls for cls in found if cls.__module__.startswith("archiver.")]


def test_the_tree_draws_every_archiver_error_under_its_parent() -> None:
    _import_all()
    actual = {
        (cls.__name__, None if cls is ArchiverError else cls.__mro__[1].__name__)
        for cls in _archiver_errors()
    }
    drawn = _drawn()
    assert len(drawn) == len(set(drawn))
    assert set(drawn) == actual


def test_no_exception_class_of_ours_takes_a_librarys_name() -> None:
    _import_all()
    taken = {
        name
        for library in LIBRARIES
        for name, value in vars(library).items()
        if inspect.isclass(value) and issubclass(value, BaseException)
    }
    roots = {package.__name__ for package in OURS}
    clashes = {
        f"{module.__name__}.{name}"
        for module in list(sys.modules.values())
        if module is not None and module.__name__.split(".")[0] in roots
        for name, value in vars(module).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == module.__name__
        and name in taken
    }
    assert clashes == set()
