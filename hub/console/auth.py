"""People, roles, sessions, CSRF tokens and login rate limiting for the console.

Passwords are hashed with argon2id (memory-hard). A session is a random cookie value;
the database keeps only its SHA-256, so a copy of the table cannot be replayed. Every
session has its own CSRF token that each state-changing form carries back.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import timedelta
from enum import IntEnum
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from psycopg import Connection

from scanfleet.daemon.core.errors import ScanfleetError

SESSION_LIFETIME = timedelta(hours=12)
FAILURE_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_USER = 5
"""Failed logins of one username within the window before further tries are refused."""
MAX_FAILURES_PER_ADDRESS = 20
"""Failed logins from one address (any username) within the window."""
LANGUAGES = ("en", "zh_Hans")

_hasher = PasswordHasher()
# Verifying against this when the username is unknown keeps the answer time the same,
# so response times do not tell which usernames exist.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class Role(IntEnum):
    """What a person may do; each role may do everything the ones below it may."""

    VIEWER = 1
    OPERATOR = 2
    ADMIN = 3

    @classmethod
    def parse(cls, name: str) -> Role:
        """``"operator"`` → ``Role.OPERATOR``; ValueError for anything else."""
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r} (viewer, operator, admin)") from None

    @property
    def label(self) -> str:
        """The role's name as stored."""
        return self.name.lower()


class AuthError(ScanfleetError, PermissionError):
    """A login was refused or an account change is invalid."""


class RateLimited(AuthError):
    """Too many failed logins; try again later."""


@dataclass(frozen=True)
class User:
    """A signed-in person."""

    id: int
    username: str
    role: Role
    sites: tuple[str, ...]
    language: str
    timezone: str

    def may(self, role: Role) -> bool:
        """True when this person's role is at least *role*."""
        return self.role >= role

    def sees_site(self, site: str) -> bool:
        """True when *site* is in this person's scope (an empty scope is every site)."""
        return not self.sites or site in self.sites


@dataclass(frozen=True)
class Session:
    """A signed-in browser session."""

    user: User
    csrf: str


def hash_password(password: str) -> str:
    """The argon2id hash of *password* (PHC string)."""
    if len(password) < 10:
        raise AuthError("a password needs at least 10 characters")
    return _hasher.hash(password)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _user(row: tuple[Any, ...]) -> User:
    uid, name, role, sites, language, tz = row
    return User(uid, name, Role.parse(role), tuple(sites), language, tz)


def add_user(
    db: Connection[Any],
    username: str,
    password: str,
    role: Role,
    *,
    sites: tuple[str, ...] = (),
    language: str = "en",
    timezone: str = "Asia/Shanghai",
) -> int:
    """Create an account (or replace its password, role and scope); return its id."""
    if language not in LANGUAGES:
        raise AuthError(f"language must be one of {', '.join(LANGUAGES)}")
    row = db.execute(
        "INSERT INTO console_users (username, password_hash, role, sites, language, timezone)"
        " VALUES (%s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash,"
        " role = EXCLUDED.role, sites = EXCLUDED.sites, language = EXCLUDED.language,"
        " timezone = EXCLUDED.timezone, disabled = false RETURNING id",
        (username, hash_password(password), role.label, list(sites), language, timezone),
    ).fetchone()
    return int(row[0]) if row else 0


def users(db: Connection[Any]) -> list[tuple[User, bool]]:
    """Every account with its disabled flag, by name."""
    rows = db.execute(
        "SELECT u.id, u.username, u.role, u.sites, u.language, u.timezone, u.disabled"
        " FROM console_users u ORDER BY u.username"
    ).fetchall()
    return [(_user(r[:6]), bool(r[6])) for r in rows]


def set_disabled(db: Connection[Any], username: str, disabled: bool) -> bool:
    """Disable or re-enable an account; a disabled account's sessions end at once."""
    cur = db.execute(
        "UPDATE console_users SET disabled = %s WHERE username = %s RETURNING id",
        (disabled, username),
    )
    row = cur.fetchone()
    if row is not None and disabled:
        db.execute("DELETE FROM console_sessions WHERE user_id = %s", (row[0],))
    return row is not None


def set_preferences(db: Connection[Any], user_id: int, language: str, timezone: str) -> None:
    """Store a person's language and time zone."""
    if language not in LANGUAGES:
        raise AuthError(f"language must be one of {', '.join(LANGUAGES)}")
    db.execute(
        "UPDATE console_users SET language = %s, timezone = %s WHERE id = %s",
        (language, timezone, user_id),
    )


def _check_rate(db: Connection[Any], username: str, address: str) -> None:
    row = db.execute(
        "SELECT count(*) FILTER (WHERE username = %s), count(*) FILTER (WHERE address = %s)"
        " FROM console_login_failures WHERE at > now() - %s",
        (username, address, FAILURE_WINDOW),
    ).fetchone()
    per_user, per_address = row if row is not None else (0, 0)
    if per_user >= MAX_FAILURES_PER_USER or per_address >= MAX_FAILURES_PER_ADDRESS:
        raise RateLimited("too many failed logins; wait a few minutes")


def login(db: Connection[Any], username: str, password: str, address: str) -> tuple[str, Session]:
    """Check the password and open a session; return (cookie value, session).

    Raises :class:`RateLimited` after too many recent failures for the username or the
    address (checked before the password, so guessing stops even with the right one),
    :class:`AuthError` for a wrong password, unknown or disabled account.
    """
    db.execute("DELETE FROM console_login_failures WHERE at < now() - %s", (FAILURE_WINDOW,))
    db.execute("DELETE FROM console_sessions WHERE expires_at < now()")
    _check_rate(db, username, address)
    row = db.execute(
        "SELECT u.id, u.username, u.role, u.sites, u.language, u.timezone, u.password_hash,"
        " u.disabled FROM console_users u"
        " WHERE u.username = %s",
        (username,),
    ).fetchone()
    try:
        _hasher.verify(row[6] if row else _DUMMY_HASH, password)
        ok = row is not None and not row[7]
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok or row is None:
        db.execute(
            "INSERT INTO console_login_failures (username, address) VALUES (%s, %s)",
            (username, address),
        )
        # Committed now: the caller's transaction is rolled back by the refusal below.
        db.commit()
        raise AuthError("wrong username or password")
    user = _user(row[:6])
    if _hasher.check_needs_rehash(row[6]):
        db.execute(
            "UPDATE console_users SET password_hash = %s WHERE id = %s",
            (_hasher.hash(password), user.id),
        )
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    db.execute(
        "INSERT INTO console_sessions (token_hash, user_id, csrf, expires_at)"
        " VALUES (%s, %s, %s, now() + %s)",
        (_token_hash(token), user.id, csrf, SESSION_LIFETIME),
    )
    return token, Session(user, csrf)


def session(db: Connection[Any], token: str | None) -> Session | None:
    """The live session for cookie value *token*, or None."""
    if not token:
        return None
    row = db.execute(
        "SELECT u.id, u.username, u.role, u.sites, u.language, u.timezone, s.csrf"
        " FROM console_sessions s"
        " JOIN console_users u ON u.id = s.user_id"
        " WHERE s.token_hash = %s AND s.expires_at > now() AND NOT u.disabled",
        (_token_hash(token),),
    ).fetchone()
    if row is None:
        return None
    return Session(_user(row[:6]), row[6])


def logout(db: Connection[Any], token: str | None) -> None:
    """End the session of *token* (no-op when there is none)."""
    if token:
        db.execute("DELETE FROM console_sessions WHERE token_hash = %s", (_token_hash(token),))


def csrf_ok(sess: Session, submitted: str | None) -> bool:
    """True when the form carried this session's CSRF token (constant-time compare)."""
    return bool(submitted) and hmac.compare_digest(sess.csrf.encode(), str(submitted).encode())
