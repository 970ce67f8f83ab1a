"""Text folding shared by every reader of free text (classification, analysis, replies)."""

from __future__ import annotations

import re
import unicodedata

_NON_WORD = re.compile(r"[^a-z0-9]+")


def fold(text: str) -> str:
    """Lower-case, strip accents, keep letters and digits separated by single spaces.

    "Le modèle 3D ne s'affiche pas !" -> "le modele 3d ne s affiche pas"
    """
    decomposed = unicodedata.normalize("NFKD", text.lower())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _NON_WORD.sub(" ", stripped).strip()
