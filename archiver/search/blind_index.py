"""The blind index: search over message text without storing it.

Text is normalised, split into tokens, and each token is stored only as a
truncated HMAC under the index key. A search term goes through the same
tokenizer, and a message is a candidate when it holds every query token;
candidates are then decrypted and checked, so a token collision costs a
decryption, never a wrong answer.

Tokenizer rules (index and query must agree exactly, which is why the
tokenizer is ours rather than a library's):

* ``normalize``: invisible format characters (soft hyphen, bidi marks) are
  removed, then NFKC, case fold, NFKC again (folding can leave a string that
  is not NFKC), katakana to hiragana (``ー`` is kept), punctuation, symbols and
  the zero-width space become spaces, whitespace collapses. Case folding is Python's full folding:
  ``ß`` → ``ss``, Greek final sigma → sigma, and Turkish ``İ`` → ``i̇`` (``i`` plus a
  combining dot, so it does not match a plain ``i``); no locale rules apply.
* Emoji: each emoji grapheme is a token of its own, also next to a word
  (``ok👍`` gives ``ok`` and ``👍``). ZWJ sequences stay whole (``👩‍💻`` is
  one token, so ``👩`` does not find it), flags are pairs of regional
  indicators, tag sequences (``🏴󠁧󠁢󠁳󠁣󠁴󠁿``) are kept. Skin-tone modifiers and variation
  selectors are dropped, so ``👍`` finds ``👍🏽`` and the reverse; a keycap
  folds to its base character (``1️⃣`` → ``1``; ``#️⃣`` has no token). Every
  "other symbol" (category So: emoji, ``©``, ``°``, ``■``…) is treated the
  same way, as are private-use characters (logos, icon fonts) and the
  unassigned code points of the emoji blocks, so that emoji newer than
  Python's Unicode tables tokenize the same after an upgrade. Math, currency
  and modifier symbols are stripped like punctuation.
* Words (Latin, Cyrillic, Greek, Hangul, Arabic, digits…) are split on
  whitespace and punctuation and cut to ``MAX_TOKEN_CHARS`` code points.
* CJK (Han, kana, bopomofo) and the unspaced Southeast Asian scripts (Thai,
  Lao, Khmer, Myanmar) form runs that are indexed as overlapping bigrams plus
  every single character, so that a one-character query is found through the
  index. A query uses only the bigrams of a run (its unigrams add nothing),
  or the character itself when the run is one character long.

Tables come from ``unicodedata`` (Unicode 14.0 on Python 3.11). A Python
upgrade can re-classify characters that are unassigned today; treat that as a
tokenizer change and rebuild the index.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import phonenumbers

from archiver.core.errors import InvalidInput

if TYPE_CHECKING:
    from hashlib import _Hash

__all__ = [
    "INDEX_KEY_SIZE",
    "MAX_TOKEN_CHARS",
    "META_ID_TOKEN_BYTES",
    "TOKEN_BYTES",
    "BlindIndex",
    "MetaIdIndex",
    "normalize",
    "normalize_phone",
    "query_tokens",
    "tokenize",
]

INDEX_KEY_SIZE = 32

# 64 bits keeps a row small (a quarter of a full digest) while a spurious
# match stays negligible: with 10^10 stored tokens, about 5e-10 false
# candidates per query token. Collisions are harmless anyway: candidates are
# decrypted and re-checked.
TOKEN_BYTES = 8

# Meta's ids join records (and deduplicate them), so a collision would matter:
# 128 bits keeps one negligible (about 1e-15 among 10^12 ids of one account).
META_ID_TOKEN_BYTES = 16

# Real words are far shorter (the longest German compounds are about 60
# letters); longer runs are hashes, base64 or keyboard mashing. Cutting them
# bounds the token size; two long words sharing this prefix collide, and the
# re-check after decryption tells them apart.
MAX_TOKEN_CHARS = 64

# The longest recommended ZWJ sequences join four pictographs and flag tag
# sequences hold at most seven tags. The bounds keep a hostile run from forming
# one huge token (the excess starts a new token), so emoji tokens need no cut.
_MAX_ZWJ_JOINS = 7
_MAX_TAGS = 8

_ZWJ = "\u200d"
_ZWSP = "\u200b"
_TAGS = (0xE0020, 0xE007F)
_REGIONAL_INDICATORS = (0x1F1E6, 0x1F1FF)
_EMOJI_BLOCKS = (0x1F000, 0x1FAFF)
_SKIN_TONES = (0x1F3FB, 0x1F3FF)
_KEYCAP = 0x20E3
_LANGUAGE_TAG = 0xE0001
_ASTRAL = 0x10000
_MAX_CODE_POINT = 0x10FFFF

# Blocks whose text has no spaces between words. Block ranges rather than
# per-character categories: punctuation inside them is already gone when they
# are used, and a future ideograph lands inside them.
_SEGMENTED_BLOCKS = (
    (0x0E00, 0x0EFF),  # Thai, Lao
    (0x1000, 0x109F),  # Myanmar
    (0x1780, 0x17FF),  # Khmer
    (0x3005, 0x3007),  # iteration mark, closing mark, ideographic zero
    (0x3021, 0x3029),  # Hangzhou numerals
    (0x3031, 0x3035),  # kana repeat marks
    (0x3038, 0x303C),  # Hangzhou numerals, 〻, 〼
    (0x3041, 0x30FF),  # Hiragana, Katakana
    (0x3100, 0x312F),  # Bopomofo
    (0x31A0, 0x31BF),  # Bopomofo extended
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xA9E0, 0xA9FF),  # Myanmar extended-B
    (0xAA60, 0xAA7F),  # Myanmar extended-A
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x1AFF0, 0x1B16F),  # Kana extended and supplement
    (0x20000, 0x3FFFF),  # CJK extensions B and later, present and future
)


class _Classes:
    """Code point classes read from ``unicodedata`` (once: see ``_tables``)."""

    def __init__(self) -> None:
        self.pictographs: set[int] = set()
        self.separators: set[int] = set()
        # Presentation only (variation selectors, skin tones, keycap, the
        # language tag) or invisible formatting (soft hyphen, bidi marks): a
        # search must not depend on them. The joiner and tags are kept for
        # emoji sequences, and the zero-width space is a word break.
        self.invisible: set[int] = {
            *range(0xFE00, 0xFE10),
            *range(0xE0100, 0xE01F0),
            *range(_SKIN_TONES[0], _SKIN_TONES[1] + 1),
            _KEYCAP,
            _LANGUAGE_TAG,
        }
        # Full-width forms whose NFKC form is one plain character. Mapping them
        # first gives the same result as NFKC, but spares typical Japanese
        # text (full-width letters, digits, question marks) NFKC's slow path,
        # which is about a hundred times slower.
        self.narrow: dict[int, str] = {}
        # Planes 0 and 1 hold every character picked out here; the astral
        # planes beyond are added by hand (tags, variation selectors,
        # ideographs, private use).
        for cp in range(0x20000):
            char = chr(cp)
            category = unicodedata.category(char)
            if category in ("So", "Co") or (
                category == "Cn" and _EMOJI_BLOCKS[0] <= cp <= _EMOJI_BLOCKS[1]
            ):
                self.pictographs.add(cp)
            elif category[0] in "PSZ" or category in ("Cc", "Cs") or char == _ZWSP:
                self.separators.add(cp)
            elif category == "Cf" and char not in (_ZWJ, _ZWSP):
                self.invisible.add(cp)
            if unicodedata.decomposition(char).startswith("<wide>"):
                folded = unicodedata.normalize("NFKC", char)
                if len(folded) == 1 and not unicodedata.combining(folded):
                    self.narrow[cp] = folded


def _ranges(cps: set[int]) -> list[tuple[int, int]]:
    """``cps`` as sorted, maximal inclusive ranges."""
    out: list[tuple[int, int]] = []
    for cp in sorted(cps):
        if out and out[-1][1] == cp - 1:
            out[-1] = (out[-1][0], cp)
        else:
            out.append((cp, cp))
    return out


def _complement(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Every code point outside ``ranges``, as ranges."""
    out: list[tuple[int, int]] = []
    start = 0
    for low, high in sorted(ranges):
        if low > start:
            out.append((start, low - 1))
        start = max(start, high + 1)
    if start <= _MAX_CODE_POINT:
        out.append((start, _MAX_CODE_POINT))
    return out


def _char_class(ranges: list[tuple[int, int]]) -> str:
    """The body of a regex character class matching ``ranges``."""
    return "".join(
        re.escape(chr(low)) if low == high else f"{re.escape(chr(low))}-{re.escape(chr(high))}"
        for low, high in ranges
    )


_ASCII_TABLE = {cp: " " for cp in range(128) if not chr(cp).isalnum()}
# ァ..ヶ → ぁ..ゖ and ヽヾ → ゝゞ; the prolonged sound mark ー is shared by both
# scripts and stays.
_HIRAGANA = {cp: chr(cp - 0x60) for cp in (*range(0x30A1, 0x30F7), 0x30FD, 0x30FE)}


@dataclass(frozen=True)
class _Tables:
    """The compiled character tables that ``normalize`` and ``_tokens`` use."""

    pre_table: dict[int, str | None]
    pre: re.Pattern[str]
    separators: re.Pattern[str]
    astral_separators: frozenset[str]
    astral_char: re.Pattern[str]
    katakana: re.Pattern[str]
    joiner_or_tag: re.Pattern[str]
    stray_joiners: re.Pattern[str]
    token: re.Pattern[str]
    word_group: int
    seg_group: int


@cache
def _tables() -> _Tables:
    """Build the tables once, on first use: scanning ``unicodedata`` and compiling
    the patterns is work that a process which never tokenizes must not pay at import."""
    classes = _Classes()
    # Planes 15-16 are private use (logos, icon fonts): pictographs too.
    pic_ranges = [*_ranges(classes.pictographs), (0xF0000, _MAX_CODE_POINT)]
    seg_ranges = [
        *_ranges(
            {
                cp
                for low, high in _SEGMENTED_BLOCKS[:-1]
                for cp in range(low, high + 1)
                if cp not in classes.pictographs
            }
        ),
        _SEGMENTED_BLOCKS[-1],
    ]
    # A word character is anything else but the space, the joiner and tags. The
    # class is spelled positively because a regex set stops at its first hit:
    # this way a BMP letter costs one bitmap lookup instead of a walk over every
    # astral pictograph range.
    word_ranges = _complement(
        [*pic_ranges, *seg_ranges, (0x20, 0x20), (ord(_ZWJ), ord(_ZWJ)), _TAGS]
    )
    pre_table: dict[int, str | None] = {**dict.fromkeys(classes.invisible), **classes.narrow}
    pic = _char_class(pic_ranges)
    tag = _char_class([_TAGS])
    pictograph = rf"[{pic}][{tag}]{{0,{_MAX_TAGS}}}"
    token = re.compile(
        rf"(?P<word>[{_char_class(word_ranges)}]+)"
        rf"|(?P<seg>[{_char_class(seg_ranges)}]+)"
        rf"|[{_char_class([_REGIONAL_INDICATORS])}]{{2}}"
        rf"|{pictograph}(?:{_ZWJ}{pictograph}){{0,{_MAX_ZWJ_JOINS}}}"
    )
    return _Tables(
        pre_table=pre_table,
        pre=re.compile(f"[{_char_class(_ranges(set(pre_table)))}]+"),
        # Regex sets walk their astral ranges for every character, so the few
        # astral separators are replaced one by one, only when present.
        separators=re.compile(
            f"[{_char_class(_ranges({cp for cp in classes.separators if cp < _ASTRAL}))}]+"
        ),
        astral_separators=frozenset(chr(cp) for cp in classes.separators if cp >= _ASTRAL),
        astral_char=re.compile(f"[{_char_class([(_ASTRAL, _MAX_CODE_POINT)])}]"),
        katakana=re.compile(f"[{_char_class(_ranges(set(_HIRAGANA)))}]+"),
        joiner_or_tag=re.compile(f"[{_ZWJ}{tag}]"),
        # Each branch starts with the character it removes, which keeps the scan quick.
        stray_joiners=re.compile(
            rf"{_ZWJ}(?<![{pic}]{_ZWJ})|{_ZWJ}(?![{pic}])|[{tag}](?<![{pic}{tag}][{tag}])[{tag}]*"
        ),
        token=token,
        word_group=token.groupindex["word"],
        seg_group=token.groupindex["seg"],
    )


def normalize(text: str) -> str:
    """Fold ``text`` to the form that is tokenized (see the module docstring)."""
    if text.isascii():
        return " ".join(text.lower().translate(_ASCII_TABLE).split())
    tables = _tables()
    # Invisible characters go before NFKC, which can then compose across them.
    text = unicodedata.normalize(
        "NFKC", tables.pre.sub(lambda m: m.group().translate(tables.pre_table), text)
    ).casefold()
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    text = tables.katakana.sub(_to_hiragana, tables.separators.sub(" ", text))
    if tables.astral_char.search(text):
        for char in tables.astral_separators.intersection(tables.astral_char.findall(text)):
            text = text.replace(char, " ")
    if tables.joiner_or_tag.search(text):
        text = tables.stray_joiners.sub("", text)
        # Rare: a joiner between a letter and its accent blocked composition.
        if not unicodedata.is_normalized("NFKC", text):
            text = unicodedata.normalize("NFKC", text)
    return " ".join(text.split())


def _to_hiragana(match: re.Match[str]) -> str:
    return match.group().translate(_HIRAGANA)


def _tokens(text: str, *, index: bool) -> list[str]:
    normalized = normalize(text)
    if normalized.isascii():
        words = [word[:MAX_TOKEN_CHARS] for word in normalized.split()]
        return list(dict.fromkeys(words))
    tables = _tables()
    out: list[str] = []
    for match in tables.token.finditer(normalized):
        token = match.group()
        kind = match.lastindex
        if kind == tables.word_group:
            out.append(token[:MAX_TOKEN_CHARS])
        elif kind != tables.seg_group or len(token) == 1:
            out.append(token)
        else:
            out.extend([token[i : i + 2] for i in range(len(token) - 1)])
            if index:
                out.extend(token)
    return list(dict.fromkeys(out))


def tokenize(text: str) -> list[str]:
    """The distinct tokens stored for ``text``, in first-seen order."""
    return _tokens(text, index=True)


def query_tokens(term: str) -> list[str]:
    """The tokens a message must all hold to match ``term``.

    Empty when the term has nothing searchable (only punctuation, say); a
    caller must not read that as "match everything".
    """
    return _tokens(term, index=False)


def normalize_phone(phone: str, default_region: str | None = None) -> str:
    """``phone`` in E.164 form; raise ``InvalidInput`` if it is not a phone number.

    Without ``default_region`` the number must be international (``+…``):
    WhatsApp's ``wa_id`` is E.164 without the plus, so pass ``"+" + wa_id``.
    The check is for a possible number (right country code and length), not
    the stricter "valid" test: phonenumbers' range metadata lags new number
    ranges, and capture must not refuse a real contact. Extensions are dropped.
    """
    region = default_region.upper() if default_region else None
    try:
        number = phonenumbers.parse(phone, region)
    except phonenumbers.NumberParseException as exc:
        # The message names the problem, never the number (personal data).
        problem = str(exc.args[0])
        if region is None and exc.error_type == exc.INVALID_COUNTRY_CODE:
            problem += " Without a default region it must start with +<country code>."
        raise InvalidInput(f"not a phone number: {problem}") from exc
    reason = phonenumbers.is_possible_number_with_reason(number)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        raise InvalidInput(f"not a phone number: {_REASONS.get(reason, 'invalid length')}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


_REASONS = {
    phonenumbers.ValidationResult.INVALID_COUNTRY_CODE: "unknown country calling code",
    phonenumbers.ValidationResult.TOO_SHORT: "too short for its country",
    phonenumbers.ValidationResult.TOO_LONG: "too long for its country",
    phonenumbers.ValidationResult.INVALID_LENGTH: "wrong length for its country",
}


class BlindIndex:
    """Keyed tokens for message text and contacts."""

    __slots__ = ("_inner", "_key", "_outer")

    def __init__(self, index_key: bytes) -> None:
        if not isinstance(index_key, bytes) or len(index_key) != INDEX_KEY_SIZE:
            raise ValueError(f"the index key must be {INDEX_KEY_SIZE} bytes")
        self._key = index_key
        # HMAC (RFC 2104) with the keyed pads hashed once: copying two hashlib
        # states is about twice as fast as hmac.HMAC.copy(), whose wrapper is
        # Python, and this runs for every token of every message. The tests
        # check it against hmac.digest.
        padded = index_key.ljust(hashlib.sha256().block_size, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in padded) + b"t:")
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in padded))

    def token(self, word: str) -> bytes:
        """The stored token for one tokenizer output ``word``."""
        inner = self._inner.copy()
        inner.update(word.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:TOKEN_BYTES]

    def tokens(self, text: str) -> list[bytes]:
        """The distinct tokens to store for a message's ``text``."""
        # Deduplicated again as bytes: a truncated-HMAC collision inside one
        # message must not break a unique (token, message) constraint.
        return list(dict.fromkeys([self.token(word) for word in tokenize(text)]))

    def query(self, term: str) -> list[bytes]:
        """The tokens a message must all hold to match the search ``term``."""
        return list(dict.fromkeys([self.token(word) for word in query_tokens(term)]))

    def contact_token(self, phone: str, default_region: str | None = None) -> bytes:
        """The full-length token of a contact's E.164 number."""
        e164 = normalize_phone(phone, default_region)
        return hmac.digest(self._key, b"p:" + e164.encode(), "sha256")

    def identity_token(self, kind: str, value: str) -> bytes:
        """The full-length token of a non-phone identity (a business-scoped user id)."""
        return hmac.digest(self._key, b"i:" + kind.encode() + b":" + value.encode(), "sha256")


class MetaIdIndex:
    """Blind tokens of Meta's ids, keyed per business account.

    A wamid embeds the customer's phone number (``wamid.`` and the base64 of a
    small struct that starts with it), so the database holds only these tokens
    of message ids and of the dedupe keys built from them; the ids themselves
    stay in the sealed objects. Each account has its own key, derived from the
    one index key: the same id in two accounts gives two tokens, so a lookup
    that forgot its account could still not join them.
    """

    __slots__ = ("_accounts", "_key")

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) != INDEX_KEY_SIZE:
            raise ValueError(f"the Meta id key must be {INDEX_KEY_SIZE} bytes")
        self._key = key
        # Per account and purpose: the HMAC's keyed pads, hashed once (see BlindIndex).
        self._accounts: dict[tuple[str, bytes], tuple[_Hash, _Hash]] = {}

    def token(self, account_id: str, meta_id: str) -> bytes:
        """The stored token of one of Meta's ids (a wamid) in ``account_id``."""
        return self._digest(account_id, b"id:", meta_id)

    def dedupe_token(self, account_id: str, dedupe_key: str) -> bytes:
        """The stored token of a record's dedupe key (which may hold a wamid)."""
        return self._digest(account_id, b"dedupe:", dedupe_key)

    def _digest(self, account_id: str, purpose: bytes, value: str) -> bytes:
        pads = self._accounts.get((account_id, purpose))
        if pads is None:
            key = hmac.digest(self._key, b"account:" + account_id.encode(), "sha256")
            padded = key.ljust(hashlib.sha256().block_size, b"\0")
            pads = (
                hashlib.sha256(bytes(b ^ 0x36 for b in padded) + purpose),
                hashlib.sha256(bytes(b ^ 0x5C for b in padded)),
            )
            self._accounts[account_id, purpose] = pads
        inner = pads[0].copy()
        inner.update(value.encode("utf-8", "surrogatepass"))
        outer = pads[1].copy()
        outer.update(inner.digest())
        return outer.digest()[:META_ID_TOKEN_BYTES]
