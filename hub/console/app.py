"""The console's ASGI application: routes, static files, security headers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from scanfleet.hub.console import actions, enrollment, pages
from scanfleet.hub.console.web import Console, Settings

# Inline <script> blocks are hashed by nothing, so the policy names none: the console's
# only script is a static file of its own origin.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class SecurityHeaders(BaseHTTPMiddleware):
    """Headers every answer carries: no framing, no sniffing, a strict CSP, no caching."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        """Add the headers to the answer."""
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Cache-Control", "no-store")
        if request.url.scheme == "https":
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        return response


def create_app(settings: Settings) -> Starlette:
    """The console for *settings* (the pool opens when the server starts)."""
    console = Console(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        console.pool.open(wait=True, timeout=30)
        try:
            yield
        finally:
            console.pool.close()

    static = resources.files("scanfleet.hub.console") / "static"
    routes = [
        Route("/", pages.overview),
        Route("/fragment/overview", pages.overview_fragment),
        Route("/events", pages.events),
        Route("/devices/{device}", pages.device_page),
        Route("/devices/{device}/ack", actions.acknowledge, methods=["POST"]),
        Route("/devices/{device}/command", actions.command, methods=["POST"]),
        Route("/devices/{device}/config", actions.config_push, methods=["POST"]),
        Route("/devices/{device}/revoke", enrollment.device_revoke, methods=["POST"]),
        Route("/enrollment", enrollment.enrollment),
        Route("/enrollment/claims", enrollment.claim_create, methods=["POST"]),
        Route("/enrollment/claims/{claim}/revoke", enrollment.claim_revoke, methods=["POST"]),
        Route("/audit", pages.audit_page),
        Route("/auditlog", pages.audit_log_page),
        Route("/people", actions.people),
        Route("/people", actions.people_save, methods=["POST"]),
        Route("/login", actions.login, methods=["GET", "POST"]),
        Route("/logout", actions.logout, methods=["POST"]),
        Route("/preferences", actions.preferences, methods=["POST"]),
        Route("/whoami", actions.whoami),
        Mount("/static", StaticFiles(directory=str(static)), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders)],
        lifespan=lifespan,
    )
    app.state.console = console
    return app
