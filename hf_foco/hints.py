"""How hf_foco reads short user text and points at the fix when it is wrong.

Every "unknown X" message in the package (optimizer names, hyperparameters, recipe and study keys, presets,
compression hooks, config overrides) is built from :func:`closest`, and every ``k=v,k=v`` flag
(``--optim_args``, ``--config_overrides``) is split by :func:`parse_key_values`, so the same mistake gets
the same kind of answer everywhere.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(word, choices: Iterable[str]) -> str | None:
    """The choice closest to ``word`` (difflib's ratio of at least 0.6), or None."""
    matches = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1)
    return matches[0] if matches else None


def did_you_mean(word, choices: Iterable[str]) -> str:
    """``" Did you mean 'x'?"`` for the closest of ``choices``, or ``""`` when none is close."""
    match = closest(word, choices)
    return f" Did you mean {match!r}?" if match else ""


def unknown_names(words: Iterable[str], choices: Iterable[str]) -> str:
    """``"'lamda' (did you mean 'lambda'?), 'foo'"``: each unknown word with its closest choice, if any."""
    choices = list(choices)
    return ", ".join(f"{w!r} (did you mean {m!r}?)" if (m := closest(w, choices)) else repr(w)
                     for w in sorted(words))


def parse_key_values(text: str | None, flag: str, example: str) -> dict[str, str]:
    """``"a=1,b=2"`` -> ``{"a": "1", "b": "2"}`` (values stay strings); a piece without ``=`` fails
    naming ``flag`` and an ``example`` of the right form."""
    pairs: dict[str, str] = {}
    for piece in (text or "").split(","):
        if not piece.strip():
            continue
        key, sep, value = piece.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag}: {piece.strip()!r} is not key=value; write e.g. {flag} \"{example}\".")
        pairs[key.strip()] = value.strip()
    return pairs
