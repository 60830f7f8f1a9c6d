"""What every page shares: the database pool, the signed-in person, CSRF, rendering, audit log.

Handlers are plain functions run in Starlette's thread pool: the database driver and the
fleet functions (paho-mqtt) are blocking, and a console serves a help desk, not the fleet.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import wraps
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from psycopg import Connection
from psycopg_pool import ConnectionPool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from scanfleet.daemon.core.errors import ScanfleetError
from scanfleet.hub.console import auth, i18n
from scanfleet.hub.console.auth import Role, Session

log = logging.getLogger(__name__)

COOKIE = "scanfleet_session"
Handler = Callable[[Request], Response]


@dataclass
class Settings:
    """How the console is run (from the command line)."""

    database: str
    fleet_dir: Path | None = None
    broker: str | None = None
    """``mqtts://HOST:PORT`` of the device listener, for actions."""
    identity: str | None = None
    """Fleet identity name (``fleet.NAME``) the console acts as."""
    enroll_url: str | None = None
    """``mqtts://HOST:PORT`` of the enrollment listener, written into claims."""
    reload_command: str | None = None
    admin_socket: Path | None = None
    """The device broker's admin socket: revocation disconnects open sessions through it."""
    secure_cookies: bool = True
    command_timeout_s: float = 30.0
    push_timeout_s: float = 180.0
    offline_after_s: float = 300.0
    """A device not heard from for this long counts as offline, whatever it last said."""
    page_size: int = 100


class Console:
    """The running console: settings, connection pool, one template environment per language."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool: ConnectionPool[Connection[tuple[Any, ...]]] = ConnectionPool(
            settings.database,
            min_size=1,
            max_size=8,
            open=False,
            kwargs={"application_name": "scanfleet-console"},
        )
        templates = resources.files("scanfleet.hub.console") / "templates"
        self.envs: dict[str, jinja2.Environment] = {}
        for language in i18n.LANGUAGE_NAMES:
            env = jinja2.Environment(
                loader=jinja2.FileSystemLoader(str(templates)),
                autoescape=True,
                extensions=["jinja2.ext.i18n"],
                undefined=jinja2.StrictUndefined,
            )
            env.install_gettext_translations(  # type: ignore[attr-defined]
                i18n.translations(language), newstyle=True
            )
            self.envs[language] = env

    @contextmanager
    def db(self) -> Iterator[Connection[tuple[Any, ...]]]:
        """A pooled connection in a transaction (committed when the block succeeds)."""
        with self.pool.connection() as conn:
            yield conn


def console(request: Request) -> Console:
    """The console this request belongs to."""
    value: Console = request.app.state.console
    return value


def address(request: Request) -> str:
    """The client's address (the proxy's, behind a reverse proxy without --forwarded-allow-ips)."""
    return request.client.host if request.client else "-"


def current(request: Request) -> Session | None:
    """The signed-in session of this request, if any."""
    cached = request.scope.get("scanfleet.session", False)
    if cached is not False:
        return cached  # type: ignore[no-any-return]
    with console(request).db() as db:
        sess = auth.session(db, request.cookies.get(COOKIE))
    request.scope["scanfleet.session"] = sess
    return sess


def audit(
    request: Request,
    user: str,
    action: str,
    target: str,
    result: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one line of the console's audit log (who, what, on what, when, result)."""
    with console(request).db() as db:
        db.execute(
            "INSERT INTO console_audit (username, address, action, target, detail, result)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (user, address(request), action, target, json.dumps(detail or {}), result),
        )
    log.info("console: %s %s %s: %s", user, action, target, result)


class Forbidden(ScanfleetError):
    """The signed-in person may not do this (answered 403)."""


def origin_ok(request: Request) -> bool:
    """False when a browser says the request comes from another origin."""
    # A browser sends Origin on every cross-site POST; a value naming another site is a
    # forgery whatever else the request carries.
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    return origin.split("://", 1)[-1] == request.headers.get("host", "")


def page(
    role: Role = Role.VIEWER, *, post: bool = False
) -> Callable[[Callable[..., Response]], Handler]:
    """Decorate a handler: sign-in required, at least *role*, CSRF token checked on POST.

    The handler gets ``(request, session)`` and, for POST, the parsed form as a third
    argument. A refused request is written to the audit log.
    """

    def wrap(handler: Callable[..., Response]) -> Handler:
        @wraps(handler)
        async def endpoint(request: Request) -> Response:
            from starlette.concurrency import run_in_threadpool

            sess = await run_in_threadpool(current, request)
            if sess is None:
                if request.method == "POST":
                    return Response("sign in first", status_code=401)
                return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
            form: FormData | None = None
            if post:
                form = await request.form()
                if not origin_ok(request) or not auth.csrf_ok(sess, _str(form.get("csrf"))):
                    await run_in_threadpool(
                        audit, request, sess.user.username, "csrf", request.url.path, "refused"
                    )
                    return Response("CSRF token missing or wrong", status_code=403)
            if not sess.user.may(role):
                await run_in_threadpool(
                    audit, request, sess.user.username, "forbidden", request.url.path, "refused"
                )
                return forbidden(request, sess)
            try:
                if post:
                    return await run_in_threadpool(handler, request, sess, form)
                return await run_in_threadpool(handler, request, sess)
            except Forbidden as err:
                # Outside the person's site scope.
                await run_in_threadpool(
                    audit, request, sess.user.username, "forbidden", f"site {err}", "refused"
                )
                return forbidden(request, sess)

        return endpoint  # type: ignore[return-value]

    return wrap


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def field_text(form: FormData, name: str, default: str = "") -> str:
    """A text field of a submitted form, stripped ('' or *default* when absent)."""
    value = form.get(name)
    return value.strip() if isinstance(value, str) else default


def require_site(sess: Session, site: str) -> None:
    """Raise :class:`Forbidden` unless *site* is in the person's scope."""
    if not sess.user.sees_site(site):
        raise Forbidden(site)


def render(
    request: Request,
    sess: Session | None,
    template: str,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """Render *template* in the person's language, dates in their time zone."""
    con = console(request)
    language = sess.user.language if sess else "en"
    tz = i18n.zone(sess.user.timezone if sess else "UTC")
    env = con.envs.get(language, con.envs["en"])
    html = env.get_template(template).render(
        session=sess,
        user=sess.user if sess else None,
        csrf=sess.csrf if sess else "",
        Role=Role,
        when=lambda value: i18n.local_time(value, tz),
        now=datetime.now(UTC),
        path=request.url.path,
        languages=i18n.LANGUAGE_NAMES,
        **context,
    )
    return HTMLResponse(html, status_code=status_code)


def forbidden(request: Request, sess: Session) -> HTMLResponse:
    """The 403 page."""
    return render(request, sess, "forbidden.html", status_code=403)
