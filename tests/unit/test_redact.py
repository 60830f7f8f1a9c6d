"""The one redaction used by logs, diagnostics, command replies and errors."""

from __future__ import annotations

import io
import logging

from scanfleet.daemon.core.redact import REDACTED, Redactor, install

TOKEN = "local-token-0123456789"  # noqa: S105 - test secret
PEM = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49\n-----END PRIVATE KEY-----"


def test_data_loses_secret_keys_and_known_values_keeps_the_rest() -> None:
    redactor = Redactor([TOKEN, None, "abc"])
    data = {
        "broker": {"url": "mqtts://b:8883", "password": "pw-123456", "username": "dev"},
        "local_api": {"token": TOKEN, "token_file": None, "enabled": True},
        "log": [f"hello {TOKEN}", "claim scanfleet-claim://site-1:s3cr3tXYZ@h:8884 used", PEM],
        "enroll_secret": "zzz",
    }
    out = redactor.data(data)
    assert out["broker"] == {"url": "mqtts://b:8883", "password": REDACTED, "username": "dev"}
    assert out["local_api"] == {"token": REDACTED, "token_file": None, "enabled": True}
    assert out["log"] == [
        f"hello {REDACTED}",
        f"claim scanfleet-claim://site-1:{REDACTED}@h:8884 used",
        REDACTED,
    ]
    assert out["enroll_secret"] == REDACTED
    assert "abc" in redactor.text("abc"), "too short to be treated as a secret in text"


def test_log_records_are_redacted_after_formatting() -> None:
    redactor = Redactor([TOKEN])
    logger = logging.getLogger("test-redact")
    logger.propagate = False
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    logger.addHandler(handler)
    try:
        install(redactor, logger)
        install(redactor, logger)  # idempotent: one filter per handler
        assert len(handler.filters) == 1
        redactor.add("later-secret-42")  # learnt after install (a pushed token)
        try:
            raise ValueError(f"bad token {TOKEN}")
        except ValueError:
            logger.exception("frame %s and %s", f'{{"token": "{TOKEN}"}}', "later-secret-42")
    finally:
        logger.removeHandler(handler)
    text = out.getvalue()
    assert "frame" in text
    assert "ValueError" in text
    assert TOKEN not in text
    assert "later-secret-42" not in text
    assert text.count(REDACTED) == 3
