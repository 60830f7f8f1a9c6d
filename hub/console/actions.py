"""What people do from the console: sign in, acknowledge, command, push config, enroll.

Every state-changing request is a POST carrying the session's CSRF token (checked by
:func:`~scanfleet.hub.console.web.page`) and ends with one audit-log line: who, what, on
what, result.
"""

from __future__ import annotations

import json
import tomllib
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from scanfleet.daemon.core.desired_config import Rejected
from scanfleet.hub.console import auth, i18n
from scanfleet.hub.console.auth import AuthError, RateLimited, Role, Session
from scanfleet.hub.console.fleet import Fleet, FleetUnavailable
from scanfleet.hub.console.pages import device_context
from scanfleet.hub.console.web import (
    COOKIE,
    address,
    audit,
    console,
    current,
    field_text,
    origin_ok,
    page,
    render,
    require_site,
)
from scanfleet.hub.repair import note_resend

# -- signing in -------------------------------------------------------------------------------


async def login(request: Request) -> Response:
    """GET: the sign-in form. POST: check the password (rate limited) and open a session."""
    if request.method == "GET":
        return render(request, None, "login.html", error=None, next=_next(request))
    if not origin_ok(request):
        # Another site posting a login would sign the victim in as the attacker.
        return Response("cross-origin sign-in refused", status_code=403)
    form = await request.form()
    username, password = field_text(form, "username"), str(form.get("password") or "")
    return await run_in_threadpool(_login, request, username, password, _next(request, form))


def _next(request: Request, form: FormData | None = None) -> str:
    target = str(form.get("next") or "") if form else request.query_params.get("next", "")
    # Only paths of this site: an open redirect would turn the login into a phishing aid.
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _login(request: Request, username: str, password: str, target: str) -> Response:
    con = console(request)
    try:
        with con.db() as db:
            token, _ = auth.login(db, username, password, address(request))
    except RateLimited as err:
        audit(request, username, "login", "", "rate_limited")
        return render(request, None, "login.html", 429, error=str(err), next=target)
    except AuthError as err:
        audit(request, username, "login", "", "refused")
        return render(request, None, "login.html", 401, error=str(err), next=target)
    audit(request, username, "login", "", "ok")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(auth.SESSION_LIFETIME.total_seconds()),
        httponly=True,
        secure=con.settings.secure_cookies,
        samesite="strict",
        path="/",
    )
    return response


@page(post=True)
def logout(request: Request, sess: Session, form: FormData) -> Response:
    """End the session."""
    with console(request).db() as db:
        auth.logout(db, request.cookies.get(COOKIE))
    audit(request, sess.user.username, "logout", "", "ok")
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


@page(post=True)
def preferences(request: Request, sess: Session, form: FormData) -> Response:
    """Store the person's language and time zone."""
    language, tz = field_text(form, "language"), field_text(form, "timezone")
    if not i18n.valid_zone(tz):
        return Response(f"unknown time zone {tz!r}", status_code=400)
    try:
        with console(request).db() as db:
            auth.set_preferences(db, sess.user.id, language, tz)
    except AuthError as err:
        return Response(str(err), status_code=400)
    audit(request, sess.user.username, "preferences", "", "ok", {"language": language, "tz": tz})
    return RedirectResponse(field_text(form, "back") or "/", status_code=303)


# -- device actions ----------------------------------------------------------------------------


def _device_page(
    request: Request, sess: Session, device_id: str, status: int = 200, **extra: Any
) -> Response:
    ctx = device_context(request, sess, device_id)
    if not ctx:
        return render(request, sess, "notfound.html", status_code=404, what=device_id)
    return render(request, sess, "device.html", status_code=status, **{**ctx, **extra})


def _target(request: Request, sess: Session) -> tuple[str, str]:
    ctx = device_context(request, sess, request.path_params["device"])
    if not ctx:
        raise LookupError(request.path_params["device"])
    dev = ctx["dev"]
    require_site(sess, dev["site"])
    return dev["site"], dev["device"]


@page(Role.OPERATOR, post=True)
def acknowledge(request: Request, sess: Session, form: FormData) -> Response:
    """Acknowledge one active alarm of the device (who and when are kept)."""
    site, device = _target(request, sess)
    code, since = field_text(form, "code"), field_text(form, "since")
    with console(request).db() as db:
        db.execute(
            "INSERT INTO console_alarm_acks (site, device, code, since, acked_by)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (site, device, code, since, sess.user.username),
        )
    audit(request, sess.user.username, "alarm.ack", f"{site}/{device}", "ok", {"code": code})
    return RedirectResponse(f"/devices/{device}#alarms", status_code=303)


def _note_resend(request: Request, site: str, device: str, span: dict[str, int]) -> str:
    """Record a person's resend in the hub's books, as the hub's own repairer does."""
    with console(request).db() as db:
        return note_resend(db, site, device, span["from_seq"], span["to_seq"])


def _note_reply(request: Request, request_id: str, reply: dict[str, Any] | None) -> None:
    status = "timeout" if reply is None else ("ok" if reply.get("ok") else "error")
    with console(request).db() as db:
        db.execute(
            "UPDATE resend_requests SET status = %s, response = %s, answered_at = now()"
            " WHERE request_id = %s",
            (status, json.dumps(reply) if reply is not None else None, request_id),
        )


def _range(form: FormData) -> dict[str, int]:
    span = {"from_seq": _seq(form, "from_seq"), "to_seq": _seq(form, "to_seq")}
    if span["to_seq"] < span["from_seq"]:
        raise ValueError("the range ends before it starts")
    return span


def _seq(form: FormData, name: str) -> int:
    value = int(field_text(form, name))
    if value < 1:
        raise ValueError(f"{name} must be ≥ 1")
    return value


@page(Role.OPERATOR, post=True)
def command(request: Request, sess: Session, form: FormData) -> Response:
    """Send a remote command (status, diagnostics, resend FROM..TO, rebind, restart)."""
    site, device = _target(request, sess)
    name = field_text(form, "name")
    args: dict[str, Any] = {}
    try:
        if name == "resend":
            args = _range(form)
        elif name == "rebind" and field_text(form, "device_name"):
            args = {"device": field_text(form, "device_name")}
        request_id = _note_resend(request, site, device, args) if name == "resend" else None
        reply = Fleet(console(request).settings).command(f"{site}/{device}", name, args)
        if request_id is not None:
            _note_reply(request, request_id, reply)
    except (ValueError, FleetUnavailable, OSError) as err:
        audit(request, sess.user.username, f"cmd.{name}", f"{site}/{device}", f"error: {err}")
        result = {"command": name, "error": str(err), "reply": None}
        return _device_page(request, sess, device, 400, result=result)
    outcome = "timeout" if reply is None else ("ok" if reply.get("ok") else "failed")
    audit(request, sess.user.username, f"cmd.{name}", f"{site}/{device}", outcome, args)
    return _device_page(
        request, sess, device, result={"command": name, "error": None, "reply": reply}
    )


def _sections(text: str) -> dict[str, Any]:
    text = text.strip()
    if text.startswith("{"):
        value = json.loads(text)
        if not isinstance(value, dict):
            raise TypeError("the configuration must be an object of sections")
        return value
    return tomllib.loads(text)


def _push(
    text: str,
    problems: list[str] | None = None,
    *,
    doc: dict[str, Any] | None = None,
    diff: str | None = None,
    report: dict[str, Any] | None = None,
    pushed: bool = False,
) -> dict[str, Any]:
    """What the device page shows of a config being previewed or pushed."""
    return {
        "text": text,
        "problems": problems or [],
        "doc": doc,
        "diff": diff,
        "report": report,
        "pushed": pushed,
    }


@page(Role.OPERATOR, post=True)
def config_push(request: Request, sess: Session, form: FormData) -> Response:
    """Validate and preview (``step=preview``) or push (``step=push``) a configuration."""
    site, device = _target(request, sess)
    target = f"{site}/{device}"
    fleet = Fleet(console(request).settings)
    text = field_text(form, "sections")
    try:
        probation = float(field_text(form, "probation_s", "60") or "60")
        sections = _sections(text)
        doc, change = fleet.preview(target, sections, probation)
    except Rejected as err:
        problems = [f"{e.key}: {e.message}" for e in err.errors]
        return _device_page(request, sess, device, 400, push=_push(text, problems))
    except (ValueError, TypeError, tomllib.TOMLDecodeError, FleetUnavailable, OSError) as err:
        return _device_page(request, sess, device, 400, push=_push(text, [str(err)]))
    if field_text(form, "step") != "push":
        return _device_page(request, sess, device, push=_push(text, doc=doc, diff=change))
    report = fleet.push(target, doc)
    result = report.get("result") if report else None
    with console(request).db() as db:
        db.execute(
            "INSERT INTO console_config_pushes"
            " (site, device, version, document, diff, pushed_by, result, report)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            (
                site,
                device,
                doc["version"],
                json.dumps(doc),
                change,
                sess.user.username,
                result,
                json.dumps(report) if report else None,
            ),
        )
    audit(
        request,
        sess.user.username,
        "config.push",
        target,
        result or "no report",
        {"version": doc["version"]},
    )
    return _device_page(
        request, sess, device, push=_push(text, doc=doc, diff=change, report=report, pushed=True)
    )


# -- people ------------------------------------------------------------------------------------


@page(Role.ADMIN)
def people(request: Request, sess: Session) -> Response:
    """Accounts, roles and site scopes."""
    with console(request).db() as db:
        rows = auth.users(db)
    return render(request, sess, "people.html", people=rows, error=None)


@page(Role.ADMIN, post=True)
def people_save(request: Request, sess: Session, form: FormData) -> Response:
    """Create an account or change one (password, role, scope); or disable/enable it."""
    username = field_text(form, "username")
    con = console(request)
    try:
        with con.db() as db:
            if field_text(form, "op") in ("disable", "enable"):
                auth.set_disabled(db, username, field_text(form, "op") == "disable")
            else:
                sites = tuple(s for s in field_text(form, "sites").replace(",", " ").split() if s)
                auth.add_user(
                    db,
                    username,
                    str(form.get("password") or ""),
                    Role.parse(field_text(form, "role")),
                    sites=sites,
                    language=field_text(form, "language") or "en",
                    timezone=field_text(form, "timezone") or "Asia/Shanghai",
                )
    except (AuthError, ValueError) as err:
        audit(request, sess.user.username, "people.save", username, f"error: {err}")
        with con.db() as db:
            rows = auth.users(db)
        return render(request, sess, "people.html", 400, people=rows, error=str(err))
    op = field_text(form, "op") or "save"
    audit(request, sess.user.username, f"people.{op}", username, "ok")
    return RedirectResponse("/people", status_code=303)


async def whoami(request: Request) -> Response:
    """The signed-in person as JSON (used by scripts and tests)."""
    sess = await run_in_threadpool(current, request)
    if sess is None:
        return Response("{}", status_code=401, media_type="application/json")
    u = sess.user
    body = {"username": u.username, "role": u.role.label, "sites": list(u.sites)}
    return Response(json.dumps(body), media_type="application/json")
