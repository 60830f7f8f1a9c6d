"""The pages people read: overview, device, completeness/audit, live updates."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse

from scanfleet.hub.audit import audit as hub_audit
from scanfleet.hub.console import queries
from scanfleet.hub.console.auth import Role, Session
from scanfleet.hub.console.fleet import COMMANDS, Fleet, FleetUnavailable
from scanfleet.hub.console.i18n import zone
from scanfleet.hub.console.web import Forbidden, console, current, page, render, require_site
from scanfleet.provisioning.ca import CAError

LIVE_POLL_S = 2.0
"""How often the live-update stream looks for a change in the database."""


def _filter(request: Request) -> queries.Filter:
    q = request.query_params
    try:
        page_no = max(0, int(q.get("page", "0")))
    except ValueError:
        page_no = 0
    status = q.get("status", "")
    return queries.Filter(
        site=q.get("site", "").strip(),
        q=q.get("q", "").strip(),
        alarm=q.get("alarm", "").strip(),
        status=status if status in ("online", "offline") else "",
        page=page_no,
    )


def _overview_context(request: Request, sess: Session) -> dict[str, Any]:
    con = console(request)
    offline_after = timedelta(seconds=con.settings.offline_after_s)
    flt = _filter(request)
    scope = sess.user.sites
    if flt.site and not sess.user.sees_site(flt.site):
        raise Forbidden(flt.site)
    with con.db() as db:
        site_rows = queries.sites(db, scope, sess.user.timezone, offline_after)
        rows, total = queries.devices(db, scope, flt, offline_after, con.settings.page_size)
    return {
        "sites": site_rows,
        "devices": rows,
        "total": total,
        "flt": flt,
        "page_size": con.settings.page_size,
    }


@page()
def overview(request: Request, sess: Session) -> Response:
    """Sites and devices at a glance, problems first; filter and search; live updates."""
    return render(request, sess, "overview.html", **_overview_context(request, sess))


@page()
def overview_fragment(request: Request, sess: Session) -> Response:
    """The overview's tables alone, fetched again by the page when the stream says so."""
    return render(request, sess, "overview_tables.html", **_overview_context(request, sess))


async def events(request: Request) -> Response:
    """Server-sent events: ``change`` whenever devices or gaps changed in the database."""
    sess = await run_in_threadpool(current, request)
    if sess is None:
        return Response("sign in first", status_code=401)
    con = console(request)

    def mark() -> str:
        with con.db() as db:
            return queries.change_mark(db)

    async def stream() -> AsyncIterator[str]:
        last = await run_in_threadpool(mark)
        yield "retry: 5000\n\n"
        while not await request.is_disconnected():
            await asyncio.sleep(LIVE_POLL_S)
            now = await run_in_threadpool(mark)
            if now != last:
                last = now
                yield f"event: change\ndata: {json.dumps(now)}\n\n"
            else:
                yield ": idle\n\n"  # keeps proxies from closing a quiet stream

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def mask(value: str | None) -> str:
    """An identity reference shown as its first 4 characters and stars."""
    if not value:
        return ""
    return value[:4] + "•" * 8


def device_context(request: Request, sess: Session, device_id: str) -> dict[str, Any]:
    """Everything the device page shows."""
    con = console(request)
    with con.db() as db:
        dev = queries.device(db, device_id, timedelta(seconds=con.settings.offline_after_s))
        if dev is None:
            return {}
        require_site(sess, dev["site"])
        ctx = {
            "dev": dev,
            # A terminal's health message has the fuller journal figures; its retained
            # state has the essential ones (and is all a simulated terminal sends).
            "health": dev["health"] or {"journal": (dev["last_state"] or {}).get("journal") or {}},
            "acks": queries.acks(db, dev["site"], device_id),
            "gaps": queries.gaps(db, device_id),
            "records": queries.recent_records(db, device_id),
            "breaks": queries.chain_breaks(db, device_id),
            "pushes": queries.pushes(db, dev["site"], device_id),
        }
    try:
        ctx["certs"] = Fleet(con.settings).certificates(dev["site"], device_id)
    except (FleetUnavailable, CAError):
        ctx["certs"] = []
    ctx["commands"] = COMMANDS
    ctx["mask"] = mask
    ctx["result"] = None
    ctx["push"] = None
    return ctx


@page()
def device_page(request: Request, sess: Session) -> Response:
    """One device: state, alarms, journal, config, certificates, records, gaps, actions."""
    device_id = request.path_params["device"]
    ctx = device_context(request, sess, device_id)
    if not ctx:
        return render(request, sess, "notfound.html", status_code=404, what=device_id)
    return render(request, sess, "device.html", **ctx)


def _day(text: str | None, default: date) -> date:
    try:
        return date.fromisoformat(text) if text else default
    except ValueError:
        return default


def _today(sess: Session) -> date:
    return datetime.now(zone(sess.user.timezone)).date()


@page()
def audit_page(request: Request, sess: Session) -> Response:
    """Completeness per site and day, with drill-down to devices, gaps and chain breaks."""
    con = console(request)
    today = _today(sess)
    site = request.query_params.get("site", "")
    since = _day(request.query_params.get("since"), today - timedelta(days=13))
    until = _day(request.query_params.get("until"), today)
    day_param = request.query_params.get("day")
    days: list[dict[str, Any]] = []
    drill: list[dict[str, Any]] = []
    with con.db() as db:
        site_rows = queries.sites(
            db, sess.user.sites, sess.user.timezone, timedelta(seconds=con.settings.offline_after_s)
        )
        if site:
            require_site(sess, site)
            days = queries.audit_days(db, site, since, until, sess.user.timezone)
            if day_param:
                drill = _drill(db, site, _day(day_param, today), sess.user.timezone)
    if request.query_params.get("format") == "csv":
        return _csv(site, days, drill)
    return render(
        request,
        sess,
        "audit.html",
        sites=site_rows,
        site=site,
        since=since,
        until=until,
        day=day_param,
        days=days,
        drill=drill,
    )


def _drill(db: Any, site: str, day: date, tz: str) -> list[dict[str, Any]]:
    """Per device of *site*: the hub's own audit (completeness, gaps, explained, breaks),
    with that day's records, scans and verdicts."""
    rows = []
    for item in hub_audit(db, site=site, since=day, timezone=tz, verify=False):
        that_day = item.days.get(day.isoformat(), {})
        rows.append(
            {
                "device": item.device,
                "records_day": that_day.get("records", 0),
                "scans_day": that_day.get("scans", 0),
                "refused_day": that_day.get("verdict", {}).get("refused", 0),
                "records": item.records,
                "last_seq": item.last_seq,
                "contiguous_seq": item.contiguous_seq,
                "pending": item.pending,
                "gaps": item.gaps,
                "explained": item.explained,
                "repaired": item.repaired,
                "chain_breaks": item.chain_breaks,
                "completeness": item.completeness,
            }
        )
    return rows


def _csv(site: str, days: list[dict[str, Any]], drill: list[dict[str, Any]]) -> Response:
    rows = drill or days
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=["site", *rows[0].keys()])
        writer.writeheader()
        for row in rows:
            writer.writerow({"site": site, **row})
    name = f"scanfleet-audit-{site or 'all'}.csv"
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@page(Role.ADMIN)
def audit_log_page(request: Request, sess: Session) -> Response:
    """The console's own audit log: who did what, when, with what result."""
    with console(request).db() as db:
        rows = queries.audit_log(db)
    return render(request, sess, "auditlog.html", rows=rows)


def not_found(request: Request, exc: Exception) -> Response:
    """A plain 404 (no session lookup: the path may not even be ours)."""
    return HTMLResponse("not found", status_code=404)
