"""Text folding shared by every reader of free text (classification, analysis, replies)."""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[^a-z0-9]+")
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _drop_combining(match: re.Match[str]) -> str:
    char = match.group()
    return "" if unicodedata.combining(char) else char


def fold(text: str) -> str:
    """Lower-case, strip accents, keep letters and digits separated by single spaces.

    "Le modèle 3D ne s'affiche pas !" -> "le modele 3d ne s affiche pas"

    On the classification hot path: ASCII text skips Unicode work, and only the non-ASCII
    characters of the decomposed text are looked at (same result as testing every one).
    """
    lowered = text.lower()
    if lowered.isascii():
        return _NON_WORD.sub(" ", lowered).strip()
    decomposed = unicodedata.normalize("NFKD", lowered)
    return _NON_WORD.sub(" ", _NON_ASCII.sub(_drop_combining, decomposed)).strip()
