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
