"""One redaction for everything that leaves the daemon: diagnostics, status, logs, errors.

Two rules, applied together:

* by **key**: a mapping value under a key that names a secret (``password``,
  ``token``, ``secret``, ``claim``, ``private_key``…) is replaced, whatever it is;
* by **value**: every known secret string (the broker password, the local API token,
  the token read from ``token_file``) and anything shaped like a claim token or a
  PEM private key is replaced wherever it appears in text — a log line of
  websockets' frame tracing, an exception message, a command reply.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

REDACTED = "<redacted>"
SECRET_KEYS = frozenset({"password", "token", "secret", "claim", "private_key", "key_pem"})
_PATTERNS = (
    # scanfleet-claim://SITE:SECRET@HOST:PORT
    re.compile(r"(scanfleet-claim://[^:/\s]+:)[^@\s\"']+"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
)
MIN_SECRET = 6
"""Shorter 'secrets' are not replaced in free text (they would garble ordinary words)."""


class Redactor:
    """Replaces secrets in data and text; :meth:`add` teaches it new secret values."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(*secrets)

    def add(self, *secrets: str | None) -> None:
        """Known secret values (None and short ones are ignored)."""
        self._secrets |= {s for s in secrets if s and len(s) >= MIN_SECRET}

    def text(self, text: str) -> str:
        """*text* with every secret value and secret-shaped span replaced."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        text = _PATTERNS[0].sub(rf"\g<1>{REDACTED}", text)
        return _PATTERNS[1].sub(REDACTED, text)

    def data(self, value: Any) -> Any:
        """A copy of JSON-like *value* with secret keys and secret values replaced."""
        if isinstance(value, dict):
            return {
                k: (REDACTED if _secret_key(k) and v not in (None, "") else self.data(v))
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value


def _secret_key(key: object) -> bool:
    return isinstance(key, str) and any(part in SECRET_KEYS for part in key.lower().split("_"))


class RedactingFilter(logging.Filter):
    """A handler filter: the record's final message, redacted (args folded in)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drops it."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        record.msg, record.args = self.redactor.text(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self.redactor.text(
                logging.Formatter().formatException(record.exc_info)
            )
        elif record.exc_text:
            record.exc_text = self.redactor.text(record.exc_text)
        return True


def install(redactor: Redactor, logger: logging.Logger | None = None) -> None:
    """Put the redacting filter on every handler of *logger* (default: the root logger)."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter(redactor))
