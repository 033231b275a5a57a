"""The search benchmark runs end to end on a tiny archive, and its figures are real."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from api.migrate import downgrade
from tests.bench import search as bench

TINY = ["--messages", "2000", "--contacts", "50", "--accounts", "3", "--repeat", "3"]


def test_search_benchmark_runs_and_both_sides_find_the_same_needles(tmp_path: Path) -> None:
    result = bench.main([*TINY, "--data-dir", str(tmp_path)])

    assert result.built
    assert set(result.kinds) == {
        "rare",
        "common_en",
        "common_ja",
        "two_terms",
        "phrase",
        "contact_range",
    }
    for kind in result.kinds.values():
        assert kind.error is None, (kind.key, kind.error)
        assert len(kind.ours) == len(kind.fts) == 3
        assert max(kind.hits) >= 1, kind.key  # a tiny corpus may lack a pair of words
        # Our first page holds every match up to the page size, as FTS5's does.
        assert kind.agree() == len(kind.hits), (kind.key, kind.hits, kind.matches)
    rare = result.kinds["rare"]
    assert rare.hits == rare.matches == rare.fts_rows == [20, 20, 20]
    assert all(size > 0 for size in result.sizes.values()), result.sizes


def test_a_finished_build_is_reused_and_a_half_built_one_is_not(tmp_path: Path) -> None:
    args = ["--messages", "600", "--needles", "5", "--contacts", "20", "--accounts", "2"]
    args += ["--repeat", "1", "--warmup", "0", "--data-dir", str(tmp_path)]
    assert bench.main(args).built
    assert not bench.main(args).built

    # A cache of an older schema is brought up to date by the migrations, not rebuilt.
    marker = json.loads((tmp_path / bench.MARKER).read_text())
    downgrade(bench.settings_for(tmp_path).database_url, "-1")
    db = sqlite3.connect(tmp_path / "strongroom.db")
    (older,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    db.close()
    (tmp_path / bench.MARKER).write_text(json.dumps(marker | {"schema": older}))
    assert not bench.main(args).built
    assert json.loads((tmp_path / bench.MARKER).read_text())["schema"] == marker["schema"]

    assert bench.main([*args, "--messages", "700"]).built  # other parameters

    (tmp_path / bench.BUILDING).touch()  # as if a rebuild had been interrupted
    assert bench.main([*args, "--messages", "700"]).built
