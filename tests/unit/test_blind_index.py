"""The blind index: normalisation, tokenizing, keyed tokens, phone numbers."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import unicodedata

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from archiver.search.blind_index import (
    INDEX_KEY_SIZE,
    MAX_TOKEN_CHARS,
    META_ID_TOKEN_BYTES,
    TOKEN_BYTES,
    BlindIndex,
    MetaIdIndex,
    normalize,
    normalize_phone,
    query_tokens,
    tokenize,
)

KEY = secrets.token_bytes(INDEX_KEY_SIZE)

THUMBS_UP = "\N{THUMBS UP SIGN}"
MEDIUM_SKIN = "\N{EMOJI MODIFIER FITZPATRICK TYPE-4}"
DARK_SKIN = "\N{EMOJI MODIFIER FITZPATRICK TYPE-6}"
ZWJ = "\N{ZERO WIDTH JOINER}"
VS16 = "\N{VARIATION SELECTOR-16}"
FAMILY = ZWJ.join(["\N{MAN}", "\N{WOMAN}", "\N{GIRL}", "\N{BOY}"])  # 👨‍👩‍👧‍👦
TECHNOLOGIST = f"\N{WOMAN}{ZWJ}\N{PERSONAL COMPUTER}"  # 👩‍💻
HEART_ON_FIRE = f"\N{HEAVY BLACK HEART}{VS16}{ZWJ}\N{FIRE}"  # ❤️‍🔥
JAPAN = "\N{REGIONAL INDICATOR SYMBOL LETTER J}\N{REGIONAL INDICATOR SYMBOL LETTER P}"
USA = "\N{REGIONAL INDICATOR SYMBOL LETTER U}\N{REGIONAL INDICATOR SYMBOL LETTER S}"
SCOTLAND = "\N{WAVING BLACK FLAG}" + "".join(chr(0xE0000 + ord(c)) for c in "gbsct") + "\U000e007f"


# Japanese


def test_katakana_and_hiragana_match() -> None:
    assert normalize("カイギ") == normalize("かいぎ") == "かいぎ"
    assert query_tokens("カイギ") == query_tokens("かいぎ") == ["かい", "いぎ"]


def test_half_width_katakana_is_widened_then_mapped() -> None:
    assert normalize("ｶｲｷﾞ") == "かいぎ"
    assert normalize("ｺｰﾋｰ") == "こーひー"


def test_prolonged_sound_mark_is_kept() -> None:
    assert normalize("コーヒー") == "こーひー"
    assert tokenize("コーヒー")[:3] == ["こー", "ーひ", "ひー"]


def test_every_katakana_maps_to_its_hiragana() -> None:
    for cp in range(0x30A1, 0x30F7):
        assert normalize(chr(cp)) == chr(cp - 0x60)
    assert normalize("ヽヾ") == "ゝゞ"
    # No single hiragana exists for these; they stay katakana.
    assert normalize("ヷヸヹヺ") == "ヷヸヹヺ"
    assert normalize("ヿ") == "こと"  # NFKC spells the digraph out first


def test_full_width_letters_digits_and_spaces_are_narrowed() -> None:
    text = "ＭＥＥＴＩＮＧ\N{IDEOGRAPHIC SPACE}１０時？"  # noqa: RUF001 - full-width forms are the point
    assert normalize(text) == "meeting 10時"


def test_kanji_runs_become_bigrams_and_unigrams() -> None:
    assert tokenize("会議室") == ["会議", "議室", "会", "議", "室"]


def test_query_uses_bigrams_only() -> None:
    assert query_tokens("会議") == ["会議"]
    assert query_tokens("会議室") == ["会議", "議室"]


def test_single_cjk_character_is_findable() -> None:
    assert tokenize("株") == ["株"]
    assert query_tokens("株") == ["株"]
    assert set(query_tokens("株")) <= set(tokenize("株式会社の決算"))
    assert set(query_tokens("の")) <= set(tokenize("株式会社の決算"))


def test_mixed_japanese_english_and_numbers() -> None:
    assert tokenize("明日のmeetingは10時") == [
        "明日",
        "日の",
        "明",
        "日",
        "の",
        "meeting",
        "は",
        "10",
        "時",
    ]
    assert query_tokens("明日のmeetingは10時") == ["明日", "日の", "meeting", "は", "10", "時"]


def test_iteration_mark_stays_in_its_run() -> None:
    assert query_tokens("人々") == ["人々"]


def test_japanese_punctuation_splits_runs() -> None:
    assert query_tokens("会議、資料。「確認」") == ["会議", "資料", "確認"]


def test_japanese_search_finds_the_message() -> None:
    message = "明日の会議は10時からです。カイギシツはＡです。"
    for term in ("会議", "かいぎしつ", "会議は10時", "a", "10時", "議"):
        assert set(query_tokens(term)) <= set(tokenize(message)), term


# Emoji


def test_emoji_next_to_words_are_tokens_of_their_own() -> None:
    assert tokenize(f"ok{THUMBS_UP}thanks") == ["ok", THUMBS_UP, "thanks"]


def test_skin_tones_are_folded() -> None:
    assert tokenize(THUMBS_UP + MEDIUM_SKIN) == [THUMBS_UP]
    assert query_tokens(THUMBS_UP + DARK_SKIN) == [THUMBS_UP]
    assert set(query_tokens(THUMBS_UP)) <= set(tokenize(f"great{THUMBS_UP}{MEDIUM_SKIN}"))


def test_zwj_sequences_stay_whole() -> None:
    assert tokenize(f"{FAMILY} {TECHNOLOGIST}") == [FAMILY, TECHNOLOGIST]
    assert "\N{WOMAN}" not in tokenize(TECHNOLOGIST)


def test_skin_toned_zwj_sequence_matches_the_plain_one() -> None:
    toned = f"\N{WOMAN}{MEDIUM_SKIN}{ZWJ}\N{PERSONAL COMPUTER}"
    assert tokenize(toned) == [TECHNOLOGIST]


def test_variation_selectors_are_ignored() -> None:
    assert tokenize(HEART_ON_FIRE) == [f"\N{HEAVY BLACK HEART}{ZWJ}\N{FIRE}"]
    assert tokenize(f"\N{HEAVY BLACK HEART}{VS16}") == tokenize("\N{HEAVY BLACK HEART}")


def test_flags_pair_regional_indicators() -> None:
    assert tokenize(JAPAN + USA) == [JAPAN, USA]
    assert tokenize(SCOTLAND) == [SCOTLAND]


def test_keycaps_fold_to_their_base() -> None:
    assert tokenize(f"1{VS16}\N{COMBINING ENCLOSING KEYCAP}") == ["1"]
    assert tokenize(f"#{VS16}\N{COMBINING ENCLOSING KEYCAP}") == []


def test_repeated_emoji_are_one_token() -> None:
    assert tokenize(THUMBS_UP * 3) == [THUMBS_UP]


def test_stray_joiners_and_tags_are_removed() -> None:
    assert normalize(f"x{ZWJ}y") == "xy"
    assert normalize(f"{ZWJ}{THUMBS_UP}{ZWJ}") == THUMBS_UP
    assert normalize("a\U000e0067\U000e007fb") == "ab"


@pytest.mark.parametrize("emoji", [THUMBS_UP, SCOTLAND, JAPAN])
def test_long_emoji_chains_are_bounded_but_still_match(emoji: str) -> None:
    chain = ZWJ.join([emoji] * 40)
    tokens = tokenize(chain)
    assert all(len(token) <= (len(emoji) + 1) * 8 for token in tokens)
    assert set(query_tokens(chain)) <= set(tokens)
    for token in tokens:
        assert query_tokens(token) == [token]


def test_other_symbols_are_tokens_and_math_and_currency_are_stripped() -> None:
    assert tokenize("25°C ©2024 $100 + 5 = €105") == [
        "25",
        "°",
        "c",
        "©",
        "2024",
        "100",
        "5",
        "105",
    ]


# Scripts, case, punctuation


def test_mixed_scripts_split_into_words() -> None:
    text = "Привет, world! Γειά σου 안녕하세요 مرحبا हिन्दी"  # noqa: RUF001 - Greek is the point
    expected = ["привет", "world", "γειά", "σου", "안녕하세요", "مرحبا", "हिन्दी"]  # noqa: RUF001 - Greek
    assert tokenize(text) == expected


def test_thai_falls_back_to_bigrams() -> None:
    message = "ประชุมพรุ่งนี้"
    assert query_tokens("ประชุม") == ["ปร", "ระ", "ะช", "ชุ", "ุม"]
    assert set(query_tokens("ประชุม")) <= set(tokenize(message))


def test_case_folding() -> None:
    assert tokenize("HELLO Hello hello") == ["hello"]
    assert normalize("Straße") == normalize("STRASSE") == "strasse"
    assert normalize("ΣΊΣΥΦΟΣ") == normalize("σίσυφος") == "σίσυφοσ"


def test_turkish_dotted_capital_i_keeps_its_dot() -> None:
    # Python's casefold has no locale: İ becomes i + combining dot above, so
    # it does not match a plain i, and the dotless i stays itself.
    assert normalize("İSTANBUL") == "i\N{COMBINING DOT ABOVE}stanbul"
    assert normalize("İSTANBUL") != normalize("istanbul")
    assert normalize("ISTANBUL") == "istanbul"
    assert normalize("ılık") == "ılık"  # noqa: RUF001 - the dotless i is the point


def test_punctuation_is_stripped() -> None:
    text = "Hello, world! (re: the 'deal') — e-mail me: a.b@example.com; 50% off?!"
    assert tokenize(text) == [
        "hello",
        "world",
        "re",
        "the",
        "deal",
        "e",
        "mail",
        "me",
        "a",
        "b",
        "example",
        "com",
        "50",
        "off",
    ]


def test_whitespace_collapses() -> None:
    assert normalize("  a\t\tb\n\r\nc\N{NO-BREAK SPACE}d  ") == "a b c d"


def test_invisible_characters_are_removed_and_zero_width_space_splits() -> None:
    assert normalize("co\N{SOFT HYPHEN}operate") == "cooperate"
    assert normalize("foo\N{ZERO WIDTH SPACE}bar") == "foo bar"
    assert normalize("\N{LEFT-TO-RIGHT MARK}abc\N{ZERO WIDTH NO-BREAK SPACE}") == "abc"


def test_compatibility_forms_fold() -> None:
    assert normalize("ﬁnance ① ㈱") == "finance 1 株"


def test_long_words_are_truncated() -> None:
    word = "x" * 500
    assert tokenize(word) == ["x" * MAX_TOKEN_CHARS]
    assert query_tokens(word) == tokenize(word)


def test_lone_surrogates_are_separators() -> None:
    assert tokenize("a\ud800b") == ["a", "b"]


def test_nothing_searchable_gives_no_tokens() -> None:
    assert tokenize("") == []
    assert query_tokens(" ...!?  ") == []


# Properties

_interesting = st.sampled_from(
    [
        *"aZß İıΣς1０Ａ会議室のカイｶﾞー々ไทย한",  # noqa: RUF001 - confusable forms are the point
        " ",
        "\t",
        ",",
        "。",
        "\N{SOFT HYPHEN}",
        "\N{COMBINING ACUTE ACCENT}",
        "\N{COMBINING CEDILLA}",
        ZWJ,
        VS16,
        THUMBS_UP,
        MEDIUM_SKIN,
        "\N{WOMAN}",
        "\N{REGIONAL INDICATOR SYMBOL LETTER J}",
        "\U000e0067",
        "\U000e007f",
        "\N{COMBINING ENCLOSING KEYCAP}",
        "\ud800",
    ]
)
texts = st.one_of(
    st.text(),
    st.text(st.characters(codec=None), max_size=40),
    st.lists(_interesting, max_size=40).map("".join),
)


@given(texts)
@example("e\N{SOFT HYPHEN}\N{COMBINING ACUTE ACCENT}")
@example(f"e{ZWJ}\N{COMBINING ACUTE ACCENT}")
def test_every_indexed_word_is_found_by_its_own_query(text: str) -> None:
    indexed = tokenize(text)
    for word in indexed:
        assert set(query_tokens(word)) <= set(indexed), word


@given(texts)
def test_a_message_matches_a_search_for_itself(text: str) -> None:
    assert set(query_tokens(text)) <= set(tokenize(text))


@given(texts)
@example("e\N{SOFT HYPHEN}\N{COMBINING ACUTE ACCENT}")
def test_normalize_is_idempotent(text: str) -> None:
    assert normalize(normalize(text)) == normalize(text)


@given(st.text())
def test_canonically_equivalent_texts_index_the_same(text: str) -> None:
    expected = tokenize(text)
    assert tokenize(unicodedata.normalize("NFD", text)) == expected
    assert tokenize(unicodedata.normalize("NFC", text)) == expected
    assert tokenize(unicodedata.normalize("NFKC", text)) == expected


@given(texts)
def test_tokens_are_distinct_bounded_and_space_free(text: str) -> None:
    tokens = tokenize(text)
    assert len(tokens) == len(set(tokens))
    assert all(token and " " not in token for token in tokens)
    assert all(len(token) <= MAX_TOKEN_CHARS for token in tokens)


@given(st.lists(st.sampled_from(list("会議室資料株式のはをカタ")), min_size=1, max_size=12))
def test_any_cjk_substring_is_found(chars: list[str]) -> None:
    run = "".join(chars)
    for start in range(len(run)):
        for end in range(start + 1, len(run) + 1):
            assert set(query_tokens(run[start:end])) <= set(tokenize(f"x {run} y"))


# Keyed tokens


def test_token_is_truncated_hmac_sha256() -> None:
    index = BlindIndex(KEY)
    expected = hmac.digest(KEY, "t:会議".encode(), "sha256")[:TOKEN_BYTES]
    assert index.token("会議") == expected
    assert len(index.token("x")) == TOKEN_BYTES == 8


@given(st.text(st.characters(codec="utf-8"), max_size=80))
def test_token_matches_the_reference_hmac(word: str) -> None:
    reference = hmac.new(KEY, b"t:" + word.encode(), hashlib.sha256).digest()[:TOKEN_BYTES]
    assert BlindIndex(KEY).token(word) == reference


def test_tokens_are_deterministic_for_a_key() -> None:
    text = f"明日のmeetingは10時 {THUMBS_UP}"
    assert BlindIndex(KEY).tokens(text) == BlindIndex(KEY).tokens(text)
    assert BlindIndex(KEY).tokens(text) == [BlindIndex(KEY).token(w) for w in tokenize(text)]


def test_tokens_differ_across_keys() -> None:
    other = BlindIndex(secrets.token_bytes(INDEX_KEY_SIZE))
    assert not set(BlindIndex(KEY).tokens("hello world 会議")) & set(
        other.tokens("hello world 会議")
    )


def test_query_tokens_are_a_subset_of_the_message_tokens() -> None:
    index = BlindIndex(KEY)
    message = index.tokens("Please confirm the 会議室 booking for Friday 👍🏽")
    assert set(index.query("CONFIRM booking")) <= set(message)
    assert set(index.query("会議")) <= set(message)
    assert set(index.query(THUMBS_UP)) <= set(message)
    assert not set(index.query("cancel")) <= set(message)


def test_tokens_do_not_contain_the_text() -> None:
    index = BlindIndex(KEY)
    assert all(b"hello" not in token for token in index.tokens("hello hello"))


@pytest.mark.parametrize("key", [b"", b"short", bytes(31), bytes(33), "k" * 32, bytearray(32)])
def test_index_key_must_be_32_bytes(key: object) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        BlindIndex(key)  # type: ignore[arg-type]  # wrong types are the point of the test


# Phone numbers


@pytest.mark.parametrize(
    ("phone", "region", "expected"),
    [
        ("+1 (650) 555-1234", None, "+16505551234"),
        ("(650) 555-1234", "US", "+16505551234"),
        ("650.555.1234", "us", "+16505551234"),
        ("tel:+1-650-555-1234", None, "+16505551234"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("+44 (0)20 7946 0958", None, "+442079460958"),
        ("00 44 20 7946 0958", "DE", "+442079460958"),
        ("090-1234-5678", "JP", "+819012345678"),
        ("+81 90 1234 5678", "GB", "+819012345678"),
        ("０９０－１２３４－５６７８", "JP", "+819012345678"),  # noqa: RUF001 - full-width digits
        ("+49 30 901820", None, "+4930901820"),
        ("+91 98765 43210", None, "+919876543210"),
    ],
)
def test_phone_numbers_normalize_to_e164(phone: str, region: str | None, expected: str) -> None:
    assert normalize_phone(phone, region) == expected


@pytest.mark.parametrize(
    ("phone", "region"),
    [
        ("", None),
        ("hello", None),
        ("16505551234", None),  # a wa_id needs its plus
        ("+1 555", None),
        ("+999 1234567", None),
        ("+44 20 7946 0958 1234 5678 90", None),
        ("12", "US"),
        ("020 7946 0958", "XX"),
    ],
)
def test_invalid_phone_numbers_are_refused(phone: str, region: str | None) -> None:
    with pytest.raises(ValueError, match="not a phone number") as raised:
        normalize_phone(phone, region)
    if phone:
        assert phone not in str(raised.value)


def test_contact_token_is_full_hmac_of_e164_in_its_own_domain() -> None:
    index = BlindIndex(KEY)
    token = index.contact_token("(650) 555-1234", "US")
    assert token == hmac.digest(KEY, b"p:+16505551234", "sha256")
    assert len(token) == 32
    assert token == index.contact_token("+1 650 555 1234")
    assert token[:TOKEN_BYTES] != index.token("+16505551234")


def test_contact_token_refuses_invalid_numbers() -> None:
    with pytest.raises(ValueError, match="not a phone number"):
        BlindIndex(KEY).contact_token("not a number")


def test_identity_token_has_its_own_domain() -> None:
    index = BlindIndex(KEY)
    token = index.identity_token("bsuid", "US.13491208655302741918")
    assert token == hmac.digest(KEY, b"i:bsuid:US.13491208655302741918", "sha256")
    assert token != index.identity_token("bsuid", "US.13491208655302741919")
    assert index.identity_token("wa_id", "+16505551234") != index.contact_token("+16505551234")


WAMID = "wamid.HBgMNDQ3NzAwOTAwMjIyFQIAERgSM0E4MUM5RjA1NEE3QTNDRDlBAA=="


@given(st.text(min_size=1, max_size=20), st.text(max_size=300))
def test_meta_id_token_is_the_accounts_truncated_hmac(account: str, meta_id: str) -> None:
    """Under the account's own key (an HMAC of its id), in its own domain per purpose."""
    ids = MetaIdIndex(KEY)
    account_key = hmac.digest(KEY, b"account:" + account.encode(), "sha256")
    value = meta_id.encode("utf-8", "surrogatepass")
    expected = hmac.digest(account_key, b"id:" + value, "sha256")[:META_ID_TOKEN_BYTES]
    assert ids.token(account, meta_id) == expected
    dedupe = hmac.digest(account_key, b"dedupe:" + value, "sha256")[:META_ID_TOKEN_BYTES]
    assert ids.dedupe_token(account, meta_id) == dedupe


def test_meta_id_tokens_differ_across_accounts_and_keys_and_hide_the_id() -> None:
    ids = MetaIdIndex(KEY)
    token = ids.token("acc_a", WAMID)
    assert token == ids.token("acc_a", WAMID)
    assert token != ids.token("acc_b", WAMID)
    assert token != MetaIdIndex(secrets.token_bytes(32)).token("acc_a", WAMID)
    assert token != ids.dedupe_token("acc_a", WAMID)
    assert len(token) == META_ID_TOKEN_BYTES
    assert b"447700900222" not in token
    with pytest.raises(ValueError, match="32 bytes"):
        MetaIdIndex(b"short")
