"""Masking of secrets in text that enrichlog reports or raises."""

from __future__ import annotations

import re

__all__ = ["mask_secrets"]

# ``scheme://user:password@host`` anywhere in a message: keep the user, hide
# the password. Greedy up to the token's last ``@``: a password may itself
# hold ``@`` or ``/`` (over-masking a query's ``@`` is the safe mistake).
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-_]*://[^:/@\s]*:)\S*@")
# ``password=...``, ``token: ...`` and ``'password': '...'`` pairs.
_SECRET_PAIR = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|api[_-]?key)\b['\"]?\s*[=:]\s*['\"]?)"
    r"[^\s&,;'\"]+",
    re.IGNORECASE,
)


def mask_secrets(text: str) -> str:
    """``text`` with URL passwords and ``password=...`` values as ``***``."""
    text = _URL_PASSWORD.sub(r"\g<head>***@", text)
    return _SECRET_PAIR.sub(r"\g<key>***", text)
