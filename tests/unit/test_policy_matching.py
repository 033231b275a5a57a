"""The lexicon matcher finds exactly the terms the archive search would flag."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

# The search's own check is the oracle: the matcher must agree with it, term by term.
from archiver.search.services import _matches, lexicon_group
from policy.matching import LexiconMatcher, MatchedTerm

PIECES = [
    "wire",
    "transfer",
    "Wire",
    "TRANSFER",
    "guaranteed",
    "returns",
    "ok",
    "\uff4f\uff4b",
    "ß",
    "ss",
    "確認",
    "予約",
    "確",
    "認",
    "振込",
    "口座",
    "配信停止",
    "ストップ",
    "すとっぷ",
    "ー",
    "👍",
    "👍🏽",
    "ok👍",
    "-",
    ".",
    ",",
    "!",
    "  ",
    " ",
    "\n",
    "e\u0301",
    "é",
    "İ",
    "i",
    "x-ray",
    "ray",
    "x",
    "12",
    "\uff11\uff12",
    "naïve",
    "über",
    "Über",
]


def _texts() -> st.SearchStrategy[str]:
    piece = st.one_of(st.sampled_from(PIECES), st.text(max_size=4))
    return st.lists(piece, max_size=12).map(lambda parts: "".join(parts))


def _terms() -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(st.sampled_from(PIECES), min_size=1, max_size=3).map(" ".join),
        st.lists(st.sampled_from(PIECES), min_size=1, max_size=3).map("".join),
        st.text(min_size=1, max_size=6),
    )


def _oracle(terms: list[str], text: str) -> set[int]:
    return {i for i, term in enumerate(terms) if _matches(lexicon_group(term), text)}


@settings(max_examples=400, deadline=None)
@given(st.lists(_terms(), max_size=8), st.lists(_texts(), min_size=1, max_size=4))
@example(["配信停止"], ["配信を停止"])
@example(["停止"], ["配信停止してください"])
@example(["wire transfer"], ["Wire-Transfer now"])
@example(["re tra"], ["wire transfer"])  # a phrase is a substring, not whole words
@example(["x-ray"], ["ray x"])  # one word by whitespace: its tokens anywhere
@example(["ストップ"], ["すとっぷ"])
def test_the_matcher_agrees_with_search_on_every_term(terms: list[str], texts: list[str]) -> None:
    matcher = LexiconMatcher((i, term, "block") for i, term in enumerate(terms))
    for text in texts:
        found = matcher.find(text)
        assert len(found) == len(set(found)), "a term found twice"
        assert {hit.term_id for hit in found} == _oracle(terms, text), (terms, text)


def test_hits_carry_the_term_and_its_action() -> None:
    matcher = LexiconMatcher(
        [(1, "guaranteed returns", "block"), (2, "確認", "hold"), (3, "insider", "flag")]
    )
    assert len(matcher) == 3
    assert sorted(matcher.find("GUARANTEED   returns! 内容を確認します")) == [
        MatchedTerm(1, "guaranteed returns", "block"),
        MatchedTerm(2, "確認", "hold"),
    ]
    assert matcher.find("returns guaranteed, nothing insiderish") == []


def test_the_same_phrase_twice_finds_both_terms_once_each() -> None:
    matcher = LexiconMatcher([(1, "wire transfer", "flag"), (2, "Wire  Transfer", "block")])
    hits = matcher.find("wire transfer, wire transfer")
    assert sorted(hit.term_id for hit in hits) == [1, 2]


def test_an_empty_lexicon_finds_nothing() -> None:
    assert LexiconMatcher([]).find("anything at all 確認") == []
