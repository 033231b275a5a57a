"""Finding the compliance lexicon's terms in an outbound text, fast.

A term matches exactly as the archive search matches it
(``archiver.search.services.lexicon_group`` and ``_matches``):

* a one-word term (no whitespace inside) matches when the text's tokens hold
  every one of its query tokens (``query_tokens``), wherever they are: this is
  how Japanese, which the tokenizer cuts into bigrams, is found;
* any other term matches when its normal form (``normalize``) is a substring
  of the text's normal form.

For a lexicon of thousands of terms, one-word terms are indexed under one of
their query tokens (the longest, usually the rarest), so a text costs one dict
lookup per distinct token plus a subset check per candidate; phrases are found
in one pass over the normalised text by an Aho-Corasick automaton.

A term with no query tokens (or an empty normal form) matches every text, as
it does in search; the lexicon refuses such terms, so none should arrive here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import ahocorasick  # type: ignore[import-not-found]  # pyahocorasick ships no types

from archiver.search.blind_index import normalize, query_tokens, tokenize

__all__ = ["LexiconMatcher", "MatchedTerm"]


class MatchedTerm(NamedTuple):
    """A lexicon term and its action (``flag``, ``hold`` or ``block``)."""

    term_id: int
    term: str
    action: str


class LexiconMatcher:
    """The active lexicon, compiled once per snapshot; ``find`` is safe to share."""

    __slots__ = ("_always", "_automaton", "_by_token", "_size")

    def __init__(self, terms: Iterable[tuple[int, str, str]]) -> None:
        # token -> the one-word terms indexed under it, with all their query tokens
        self._by_token: dict[str, list[tuple[frozenset[str], MatchedTerm]]] = {}
        self._always: list[MatchedTerm] = []
        phrases: dict[str, list[MatchedTerm]] = {}
        self._size = 0
        for term_id, term, action in terms:
            entry = MatchedTerm(term_id, term, action)
            self._size += 1
            if len(term.split()) == 1:
                tokens = frozenset(query_tokens(term))
                if not tokens:
                    self._always.append(entry)
                    continue
                key = max(tokens, key=lambda t: (len(t), t))
                self._by_token.setdefault(key, []).append((tokens, entry))
            else:
                phrase = normalize(term)
                if not phrase:
                    self._always.append(entry)
                    continue
                phrases.setdefault(phrase, []).append(entry)
        self._automaton: ahocorasick.Automaton | None = None
        if phrases:
            automaton = ahocorasick.Automaton()
            for phrase, entries in phrases.items():
                automaton.add_word(phrase, tuple(entries))
            automaton.make_automaton()
            self._automaton = automaton

    def __len__(self) -> int:
        return self._size

    def find(self, text: str) -> list[MatchedTerm]:
        """Every term that ``text`` holds, each once (one-word terms first)."""
        found = list(self._always)
        if self._by_token:
            words = set(tokenize(text))
            by_token = self._by_token
            for word in words:
                candidates = by_token.get(word)
                if candidates:
                    found.extend(entry for tokens, entry in candidates if tokens <= words)
        if self._automaton is not None:
            folded = normalize(text)
            if folded:
                seen: set[tuple[MatchedTerm, ...]] = set()
                for _end, entries in self._automaton.iter(folded):
                    if entries not in seen:
                        seen.add(entries)
                        found.extend(entries)
        return found
