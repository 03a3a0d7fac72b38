"""Message tokenization (DESIGN §2): tokens are maximal runs of Unicode letters and digits,
lower-cased.  ``timeout`` matches ``Timeout!`` but not ``timeouts``; ``_`` and ``-`` split tokens.

The same function feeds the inverted index at seal time and the query parser, so what is indexed
and what is searched can never disagree.
"""

from __future__ import annotations

import re

# [^\W_] is "a word character that is not underscore": Unicode letters and digits (and the
# combining marks \w includes).  One compiled pattern, used everywhere.
_TOKEN_RE = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """All tokens of ``text`` in order, lower-cased (duplicates kept, for phrases)."""
    return _TOKEN_RE.findall(text.lower())


def token_set(text: str) -> set[str]:
    """The distinct tokens of ``text``."""
    return set(_TOKEN_RE.findall(text.lower()))


#: ``bytes.translate`` table for ASCII text: letters lower-cased, digits kept, every other byte a
#: space.  For ASCII text the regex's letters and digits are exactly [A-Za-z0-9], so
#: ``ascii_token_set(t) == {x.encode() for x in token_set(t)}`` — at about half the cost.
ASCII_TOKEN_TABLE = bytes(
    c + 32 if 65 <= c <= 90 else c if (48 <= c <= 57 or 97 <= c <= 122) else 32 for c in range(256)
)


def ascii_token_set(text: str) -> set[bytes]:
    """The distinct tokens of an ASCII ``text`` (check ``text.isascii()`` first), as bytes."""
    return set(text.encode().translate(ASCII_TOKEN_TABLE).split())
