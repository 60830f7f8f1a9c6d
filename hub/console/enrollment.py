"""Enrollment from the console: claims with their QR code, withdrawal, device revocation.

Claims are made by ``provisioning.claims.create_claim`` and drawn by ``claim_qr_png``;
revocation goes through ``provisioning.revocation.Revoker`` (CRL, broker reload,
disconnect), exactly as ``scanfleet fleet claim create`` and ``fleet revoke`` do.
"""

from __future__ import annotations

import base64
from datetime import timedelta

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from scanfleet.daemon.core.claims import ClaimError
from scanfleet.hub.console.auth import Role, Session
from scanfleet.hub.console.fleet import Fleet, FleetUnavailable
from scanfleet.hub.console.web import audit, console, field_text, page, render, require_site
from scanfleet.provisioning.ca import CAError
from scanfleet.provisioning.claims import claim_qr_png


@page(Role.VIEWER)
def enrollment(request: Request, sess: Session) -> Response:
    """Claims and device certificates (the registry of the fleet CA)."""
    fleet = Fleet(console(request).settings)
    try:
        claims = [c for c in fleet.claims() if sess.user.sees_site(c.site)]
        certs = [
            c
            for c in fleet.ca.registry.certs(kind="device")
            if sess.user.sees_site(c.cn.split("/", 1)[0])
        ]
    except FleetUnavailable as err:
        return render(request, sess, "enrollment.html", claims=[], certs=[], error=str(err))
    return render(request, sess, "enrollment.html", claims=claims, certs=certs, error=None)


def _hours(text: str) -> float:
    hours = float(text)
    if not 0 < hours <= 24 * 30:
        raise ValueError("a claim lives between a few minutes and 30 days")
    return hours


@page(Role.OPERATOR, post=True)
def claim_create(request: Request, sess: Session, form: FormData) -> Response:
    """Create a claim and show it once, with its QR code, on a printable page."""
    site = field_text(form, "site")
    require_site(sess, site)
    device = field_text(form, "device") or None
    try:
        hours = _hours(field_text(form, "ttl_hours", "24") or "24")
        claim_id, claim = Fleet(console(request).settings).create_claim(
            site, timedelta(hours=hours), device
        )
    except (ValueError, ClaimError, FleetUnavailable) as err:
        audit(request, sess.user.username, "claim.create", site, f"error: {err}")
        return Response(str(err), status_code=400)
    audit(request, sess.user.username, "claim.create", site, "ok", {"claim": claim_id})
    png = base64.b64encode(claim_qr_png(claim)).decode()
    return render(
        request,
        sess,
        "claim.html",
        claim_id=claim_id,
        site=site,
        device=device,
        hours=hours,
        token=claim.token,
        png=png,
    )


@page(Role.OPERATOR, post=True)
def claim_revoke(request: Request, sess: Session, form: FormData) -> Response:
    """Withdraw an unused claim: it can no longer enroll anything."""
    claim_id = request.path_params["claim"]
    fleet = Fleet(console(request).settings)
    found = [c for c in fleet.claims() if c.id == claim_id]
    if not found:
        return Response("no such claim", status_code=404)
    require_site(sess, found[0].site)
    ok = fleet.ca.registry.withdraw_claim(claim_id, f"withdrawn by {sess.user.username}")
    audit(
        request,
        sess.user.username,
        "claim.revoke",
        claim_id,
        "ok" if ok else "already used or expired",
    )
    return RedirectResponse("/enrollment", status_code=303)


@page(Role.ADMIN, post=True)
def device_revoke(request: Request, sess: Session, form: FormData) -> Response:
    """Revoke the device's certificates: it can no longer connect, and is disconnected now."""
    site, device = field_text(form, "site"), request.path_params["device"]
    require_site(sess, site)
    reason = field_text(form, "reason") or "revoked from the console"
    target = f"{site}/{device}"
    try:
        count = Fleet(console(request).settings).revoke_device(site, device, reason)
    except (FleetUnavailable, CAError, KeyError) as err:
        audit(request, sess.user.username, "device.revoke", target, f"error: {err}")
        return Response(str(err), status_code=400)
    audit(request, sess.user.username, "device.revoke", target, f"revoked {count}")
    return RedirectResponse("/enrollment", status_code=303)
