"""Process start-up helpers."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from api.bootstrap import freeze_startup_heap


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # hand the test process's objects back to the collector


@pytest.mark.usefixtures("unfrozen")
def test_freeze_keeps_live_objects_out_of_collections_and_leaves_no_garbage() -> None:
    live = [_Node() for _ in range(100)]
    cycle = _Node()
    cycle.other = _Node()
    cycle.other.other = cycle
    garbage = weakref.ref(cycle)
    del cycle
    assert garbage() is not None  # a cycle: only the collector frees it

    freeze_startup_heap()

    assert garbage() is None
    tracked = {id(obj) for obj in gc.get_objects()}
    assert not any(id(node) in tracked for node in live)
    assert gc.get_freeze_count() >= len(live)
