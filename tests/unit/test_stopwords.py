"""Stop and resume words: the whole reply, in the customer's language, after the
blind index's folding; near-misses are not keywords."""

from __future__ import annotations

import pytest

from policy.stopwords import RESUME_WORDS, STOP_WORDS, keyword


@pytest.mark.parametrize(
    "text",
    [
        "STOP", "stop", "Stop.", "STOP!!!", "stop 🛑", " STOP ", "\uff33\uff34\uff2f\uff30",
        "StopAll", "STOP ALL",
        "UNSUBSCRIBE", "cancel", "End", "quit", "OPT OUT", "opt-out", "optout",
        "ARRÊT", "arret", "Désabonner", "BAJA", "¡Alto!", "parar", "Cancelar",
        "ABMELDEN", "Stopp", "ANNULLA", "disiscrivimi",
        "停止", "退订", "取消订阅", "配信停止", "ストップ", "ｽﾄｯﾌﾟ", "解除",
        "중지", "수신거부", "СТОП", "стоп", "Отписаться", "إيقاف",
    ],
)  # fmt: skip
def test_stop_words_in_many_languages_opt_out(text: str) -> None:
    assert keyword(text) == "opt_out"


@pytest.mark.parametrize("text", ["START", "start!", "Unstop", "RESUME", "reanudar", "再開"])
def test_resume_words_opt_in(text: str) -> None:
    assert keyword(text) == "opt_in"


@pytest.mark.parametrize(
    "text",
    [
        "stop sending me the wrong size",
        "please stop",
        "STOP?? why did you charge me",
        "stopping by tomorrow",
        "unstoppable",
        "the end",
        "yes",
        "OK",
        "Y",
        "start the order",
        "停止了吗",
        "",
        "🛑",
        "!!!",
        "stop " * 30,
    ],
)
def test_near_misses_are_no_keyword(text: str) -> None:
    assert keyword(text) is None


def test_no_word_is_both_a_stop_and_a_resume_word() -> None:
    stops = {keyword(w) for w in STOP_WORDS}
    resumes = {keyword(w) for w in RESUME_WORDS}
    assert (stops, resumes) == ({"opt_out"}, {"opt_in"})
