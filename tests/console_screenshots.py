"""Regenerate the screenshots in docs/console/ (``make screenshots``).

A private PostgreSQL cluster with the console test fleet, the real console server and
Debian's Chromium (headless) through Playwright; nothing is downloaded.

    python tests/console_screenshots.py [OUT_DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scanfleet.hub.db import connect, upgrade
from support.console import ConsoleServer, add_user, browser
from support.console_seed import OFFLINE_DEVICE, ONLINE_DEVICE, SITE, seeded_hub
from support.pki import Fleet
from support.postgres import PostgresCluster, find_pg_bin

PASSWORD = "screenshot password"  # noqa: S105 (throwaway account)
SHOTS = [
    ("overview", "/"),
    ("overview-offline", "/?status=offline"),
    ("device", f"/devices/{ONLINE_DEVICE}"),
    ("device-alarm", f"/devices/{OFFLINE_DEVICE}"),
    ("enrollment", "/enrollment"),
    ("audit", f"/audit?site={SITE}"),
    ("people", "/people"),
    ("auditlog", "/auditlog"),
]


def main(argv: list[str]) -> int:
    """Write one PNG per page (English) plus the overview in Chinese."""
    out = Path(argv[0] if argv else "docs/console")
    out.mkdir(parents=True, exist_ok=True)
    bindir = find_pg_bin()
    if bindir is None:
        print("screenshots: PostgreSQL is not installed", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="scanfleet-screens-"))
    cluster = PostgresCluster(bindir)
    try:
        cluster.init()
        cluster.start()
        dsn = cluster.dsn(cluster.create_database("screens"))
        with connect(dsn) as conn:
            upgrade(conn)
        add_user(dsn, "li.wei", PASSWORD, "admin")
        fleet = Fleet(work / "fleet")
        fleet.device(SITE, ONLINE_DEVICE)
        seeding = seeded_hub(dsn, work)
        seeding.__enter__()
        server = ConsoleServer(
            dsn,
            work,
            "--fleet-dir",
            str(fleet.root),
            "--enroll-url",
            "mqtts://fleet.example.cn:8884",
            "--offline-after",
            "120",
        ).start()
        try:
            for chromium in browser():
                page = chromium.new_page(viewport={"width": 1280, "height": 900})
                page.goto(f"{server.url}/login")
                page.screenshot(path=str(out / "login.png"))
                page.fill("input[name=username]", "li.wei")
                page.fill("input[name=password]", PASSWORD)
                page.click("button[type=submit]")
                page.wait_for_url(f"{server.url}/")
                for name, path in SHOTS:
                    page.goto(f"{server.url}{path}")
                    page.screenshot(path=str(out / f"{name}.png"), full_page=True)
                    print(f"screenshots: {out / name}.png", file=sys.stderr)
                page.goto(f"{server.url}/enrollment")
                page.fill("input[name=site]", "store-12")
                page.click("#create-claim")
                page.wait_for_selector("#claim-qr")
                page.screenshot(path=str(out / "claim.png"), full_page=True)
                page.goto(f"{server.url}/")
                page.select_option("select[name=language]", "zh_Hans")
                page.wait_for_selector("html[lang=zh-Hans]")
                page.screenshot(path=str(out / "overview-zh.png"), full_page=True)
        finally:
            server.stop()
            seeding.__exit__(None, None, None)
    finally:
        cluster.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
