"""PVM's console tokenizer: words split on blanks, quotes, backslash, `#` comments.

Also used for hostfile lines (``escapes=False``: there PVM kept a backslash as it is).
"""
from __future__ import annotations

MAX_WORDS = 127  # PVM: more words than this is "command too long"


class TokenizeError(ValueError):
    """A line PVM's tokenizer would reject ("unmatched '", "command too long")."""


def split(line: str, max_words: int | None = MAX_WORDS, escapes: bool = True) -> list[str]:
    """Split *line* into words as PVM did.

    Words are separated by blanks; ``'...'`` and ``"..."`` quote (the quote
    characters are removed, an empty pair is an empty word); a backslash takes
    the next character literally (with *escapes*; else it is an ordinary character);
    a word that *starts* with ``#`` ends the line. More than *max_words* words
    (None: no limit) is "command too long".
    """
    words: list[str] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i].isspace():
            i += 1
        if i >= n or line[i] == "#":
            return words
        word: list[str] = []
        while i < n and not line[i].isspace():
            c = line[i]
            if c == "\\" and escapes:
                if i + 1 < n:
                    word.append(line[i + 1])
                i += 2
            elif c in "'\"":
                end = line.find(c, i + 1)
                if end < 0:
                    raise TokenizeError(f"unmatched {c}")
                word.append(line[i + 1:end])
                i = end + 1
            else:
                word.append(c)
                i += 1
        words.append("".join(word))
        if max_words is not None and len(words) > max_words:
            raise TokenizeError("command too long")


def split_commands(text: str) -> list[str]:
    """Split ``pvm -e`` text at every ``;`` or newline outside quotes and escapes."""
    parts: list[str] = []
    cur: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and not quote and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if quote:
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c in ";\n":
            parts.append("".join(cur).strip())
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    parts.append("".join(cur).strip())
    return [p for p in parts if p]
