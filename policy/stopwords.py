"""Stop and resume words: a customer's whole reply that opts them out or back in.

A message counts only when its whole text, once folded by the blind index's
``normalize`` (case, width, accents kept, katakana to hiragana, punctuation to
spaces) and stripped of the punctuation, symbols and emoji around it, is one of
the words below. "STOP!" and "stop 🛑" opt out; "stop sending me the wrong size"
does not. Resume words are only the unambiguous ones: "yes" or "ok" answer many
questions and never opt anyone in.
"""

from __future__ import annotations

import unicodedata
from functools import cache
from typing import Literal

from archiver.search.blind_index import normalize

Keyword = Literal["opt_out", "opt_in"]

STOP_WORDS: tuple[str, ...] = (
    # English
    "STOP", "STOPALL", "STOP ALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT",
    "OPT OUT", "OPTOUT", "OPT-OUT", "REVOKE",
    # French
    "ARRÊT", "ARRET", "ARRÊTER", "ARRETER", "DÉSABONNER", "DESABONNER",
    "DÉSINSCRIRE", "DESINSCRIRE", "STOPPER",
    # Spanish
    "BAJA", "DARSE DE BAJA", "ALTO", "PARAR", "CANCELAR", "DESUSCRIBIR",
    "DESINSCRIBIR", "ANULAR SUSCRIPCIÓN",
    # Portuguese
    "PARE", "SAIR", "DESCADASTRAR", "CANCELAR INSCRIÇÃO",
    # German, Dutch, Scandinavian
    "ABMELDEN", "STOPP", "ABBESTELLEN", "AFMELDEN", "UITSCHRIJVEN", "AVSLUTA",
    # Italian
    "ANNULLA", "DISISCRIVIMI", "BASTA", "FERMA",
    # Chinese
    "停止", "退订", "退訂", "取消订阅", "取消訂閱",
    # Japanese
    "配信停止", "ストップ", "解除", "配信解除", "購読停止",
    # Korean
    "중지", "수신거부", "수신 거부", "구독취소",
    # Russian, Ukrainian
    "СТОП", "ОТПИСАТЬСЯ", "ОТПИСКА", "ВІДПИСАТИСЯ",
    # Arabic, Hebrew, Turkish, Hindi
    "إيقاف", "توقف", "إلغاء الاشتراك", "הסר", "DURDUR", "रोकें",
)  # fmt: skip

RESUME_WORDS: tuple[str, ...] = (
    "START", "UNSTOP", "RESUME", "REANUDAR", "REPRENDRE", "RETOMAR",
    "再開", "恢复订阅", "재개", "ВОЗОБНОВИТЬ",
)  # fmt: skip


def _edge(char: str) -> bool:
    """Punctuation, symbols (emoji among them), marks left alone and format
    characters (joiners, variation selectors): what may surround a keyword."""
    category = unicodedata.category(char)
    return category[0] in "PSZC" or category in ("Mn", "Me")


def _fold(text: str) -> str:
    folded = normalize(text)
    start, end = 0, len(folded)
    while start < end and _edge(folded[start]):
        start += 1
    while end > start and _edge(folded[end - 1]):
        end -= 1
    return folded[start:end].strip()


@cache
def _table() -> dict[str, Keyword]:
    table: dict[str, Keyword] = {_fold(word): "opt_in" for word in RESUME_WORDS}
    table.update({_fold(word): "opt_out" for word in STOP_WORDS})
    return table


def keyword(text: str) -> Keyword | None:
    """``"opt_out"`` when the whole of ``text`` is a stop word, ``"opt_in"`` when it
    is a resume word, else ``None``."""
    if len(text) > 100:  # no keyword is this long: skip the folding
        return None
    return _table().get(_fold(text))
