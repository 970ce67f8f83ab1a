"""The client's own words in a reply: quoted history, signatures and phone footers cut.

What is cut must certainly not be the client's: a reply typed on a phone above the quote,
an answer written under a signature, or below the quote, keeps every word the client wrote.

- A quote whose lines are marked ('>') is removed line by line with its attribution ("Le 4
  mars 2026 à 10:12, X <x@y> a écrit :", "On ... wrote:"); whatever the client wrote above,
  between or below stays. An attribution must hold a digit (its date), so a client's own
  "comme mon associé a écrit :" is not one.
- An unmarked quote (Outlook's "De : ... Envoyé : ..." header block, "-----Original
  Message-----", a line of underscores, an attribution followed by unmarked lines) runs to
  the end of the message: it is cut from its header on.
- A phone footer ("Envoyé de mon iPhone", "Sent from my Galaxy", "Obtenir Outlook pour
  Android") is one line: only that line goes, never what follows it.
- A signature after a "-- " line runs to the next blank line; later paragraphs go too only
  when every line is contact details (phone, e-mail, web address). Text after it is the
  client's. The signature's other lines are kept aside (`Parts.doubtful`): when nothing else
  is left, the reader looks at them without trusting them (an answer written right under
  the signature, with no blank line, cannot be told from a name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_I = re.IGNORECASE | re.MULTILINE

# An attribution line, wrapped on up to three lines by some clients.
_ATTRIBUTIONS = (
    re.compile(r"^[ \t]*Le\b[^\n]{0,300}(?:\n[^\n]{0,300}){0,2}?\ba\s+[ée]crit\s*:", _I),
    re.compile(r"^[ \t]*On\b[^\n]{0,300}(?:\n[^\n]{0,300}){0,2}?\bwrote\s*:", _I),
)
# Headers of a quote whose lines are not marked: everything from there on is quoted.
_UNMARKED = (
    # Outlook: "De : ..." followed within a few lines by "Envoyé : ..." / "Sent: ..."
    re.compile(r"^[ \t]*\*?(?:De|From)\s*:\*?[^\n]*\n(?:[^\n]*\n){0,3}?[ \t]*\*?"
               r"(?:Envoy[ée]|Sent|Date|[ÀA]|To)\s*:", _I),
    re.compile(r"^[ \t]*-{2,}\s*(?:Original Message|Message d'origine|Message original|"
               r"Forwarded message|Message transf[ée]r[ée])\s*-{2,}", _I),
    re.compile(r"^[ \t]*_{10,}[ \t]*$", _I),
)
_QUOTED_LINE = re.compile(r"^[ \t]*>.*$\n?", re.MULTILINE)
_FOOTER_LINE = re.compile(
    r"^[ \t]*(?:Envoy[ée] (?:de|depuis|à partir de|a partir de|avec|via)\b|"
    r"Sent (?:from|with|via)\b|Get Outlook for\b|(?:Obtenir|T[ée]l[ée]charger) Outlook pour\b)"
    r"[^\n]{0,80}$\n?", _I)
_SIGNATURE_MARK = re.compile(r"^[ \t]*--[ \t]*$", re.MULTILINE)
_CONTACT = re.compile(
    r"\+?\d[\d .()/-]{7,}\d|\S+@\S+\.\w+|(?:https?://|www\.)\S+|"
    r"^[ \t]*(?:t[ée]l|tel|mob|mobile|portable|fax|phone|ph|cell)\b", re.IGNORECASE)
_PARAGRAPH = re.compile(r"(?:^[ \t]*\S[^\n]*(?:\n|\Z))+", re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")


@dataclass(frozen=True)
class Parts:
    """A reply cut in two: the client's own words, and signature lines that may be words."""

    own: str
    doubtful: str = ""


def split_reply(text: str) -> Parts:
    """The client's own words, and the signature lines set aside (see the module doc)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _without_quotes(text)
    text = _FOOTER_LINE.sub("", text)
    own, doubtful = _without_signatures(text)
    return Parts(_tidy(own), _tidy(doubtful))


def strip_quoted(text: str) -> str:
    """The client's own words: no quoted history, attribution lines, footer or signature."""
    return split_reply(text).own


def _without_quotes(text: str) -> str:
    cut = min((m.start() for p in _UNMARKED if (m := p.search(text))), default=len(text))
    kept: list[str] = []
    position = 0
    while True:
        found = [m for p in _ATTRIBUTIONS for m in p.finditer(text, position, cut)
                 if any(c.isdigit() for c in m.group())]
        if not found:
            break
        first = min(found, key=lambda m: m.start())
        kept.append(text[position:first.start()])
        after = text[first.end():cut]
        following = next((line for line in after.split("\n")[1:] if line.strip()), "")
        if after.strip() and not after.split("\n", 1)[0].strip().startswith(">") \
                and not following.lstrip().startswith(">"):
            cut = first.start()  # an unmarked quote: it runs to the end
            position = cut
            break
        position = first.end()
    kept.append(text[position:cut])
    return _QUOTED_LINE.sub("", "".join(kept))


def _without_signatures(text: str) -> tuple[str, str]:
    """Cut each "-- " signature: its first paragraph, then paragraphs of contact details."""
    own: list[str] = []
    doubtful: list[str] = []
    position = 0
    for mark in _SIGNATURE_MARK.finditer(text):
        if mark.start() < position:
            continue
        own.append(text[position:mark.start()])
        position = mark.end()
        for number, paragraph in enumerate(_PARAGRAPH.finditer(text, mark.end())):
            if number > 0 and not _all_contact(paragraph.group()):
                break
            doubtful.extend(line for line in paragraph.group().split("\n")
                            if line.strip() and not _CONTACT.search(line))
            position = paragraph.end()
    own.append(text[position:])
    return "".join(own), "\n".join(doubtful)


def _all_contact(paragraph: str) -> bool:
    lines = [line for line in paragraph.split("\n") if line.strip()]
    return bool(lines) and all(_CONTACT.search(line) for line in lines)


def _tidy(text: str) -> str:
    return _BLANK_RUNS.sub("\n\n", text).strip()
