"""Claim QR codes: what a scanner reads back from the PNG and from the terminal drawing is
the token itself (decoded by zbar, an independent QR reader)."""

from __future__ import annotations

import stat
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from scanfleet.daemon.core.claims import Claim
from scanfleet.provisioning.ca import FleetCA
from scanfleet.provisioning.claims import claim_qr_png, claim_qr_text, create_claim
from support.prereq import require_executable

# Light modules are drawn (a dark terminal shows them white): (upper, lower) light.
_HALF_BLOCKS = {"█": (True, True), "▀": (True, False), "▄": (False, True), " ": (False, False)}


def zbar_decode(png: Path) -> list[str]:
    """Every QR code zbarimg finds in *png*, as text."""
    zbarimg = require_executable("zbarimg")
    out = subprocess.run(
        [zbarimg, "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable", str(png)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def _png_from_rows(rows: list[list[bool]], path: Path, scale: int = 6) -> None:
    """A greyscale PNG of *rows* (True = light), each module *scale* pixels, plus a margin."""
    width = len(rows[0])
    margin = [True] * width
    rows = [margin] * 2 + rows + [margin] * 2
    raw = b""
    for row in rows:
        line = bytes(
            255 if light else 0 for light in ([True] * 2 + row + [True] * 2) for _ in range(scale)
        )
        raw += (b"\x00" + line) * scale
    px_w = (width + 4) * scale

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", px_w, len(rows) * scale, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def claim(tmp_path: Path) -> Claim:
    ca = FleetCA.init(tmp_path / "fleet")
    return create_claim(ca.registry, "pharmacy-7", "fleet.example.org", 8884)[1]


def test_png_decodes_to_the_claim_token(claim: Claim, tmp_path: Path) -> None:
    png = tmp_path / "claim.png"
    png.write_bytes(claim_qr_png(claim))
    assert zbar_decode(png) == [claim.token]
    assert Claim.parse(zbar_decode(png)[0]) == claim


def test_terminal_drawing_decodes_to_the_claim_token(claim: Claim, tmp_path: Path) -> None:
    text = claim_qr_text(claim)
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1, "ragged drawing"
    rows: list[list[bool]] = []
    for line in lines:
        pairs = [_HALF_BLOCKS[ch] for ch in line]
        rows.append([upper for upper, _ in pairs])
        rows.append([lower for _, lower in pairs])
    png = tmp_path / "terminal.png"
    _png_from_rows(rows, png)
    assert zbar_decode(png) == [claim.token]


@pytest.mark.integration
def test_cli_claim_create_qr_writes_a_private_png_and_keeps_stdout_the_token(
    tmp_path: Path,
) -> None:
    fleet = tmp_path / "fleet"
    FleetCA.init(fleet)
    png = tmp_path / "out" / "c.png"
    png.parent.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "scanfleet.daemon", "fleet", "--fleet-dir", str(fleet), "claim",
         "create", "--site", "clinic-3", "--enroll-url", "mqtts://fleet.example:8884",
         "--qr", str(png)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    token = done.stdout.strip()
    assert token.startswith("scanfleet-claim://clinic-3:")
    assert "█" in done.stderr
    assert f"QR code written to {png}" in done.stderr
    assert stat.S_IMODE(png.stat().st_mode) == 0o600
    assert zbar_decode(png) == [token]
