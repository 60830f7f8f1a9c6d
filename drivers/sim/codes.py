"""The code mix a pharmacy counter scanner sees, as raw reads.

Shapes follow shared/reference/codes.md: 码上放心 trace codes are ``8\\d{19}`` (``89…``
are special drugs; some begin with digits a naive GS1 parser takes for an AI such as
8200 or 8013), imports carry GS1 DataMatrix, shelf goods EAN-13 ``69…``, some packs
the 14-digit 本位码 ``869…``, and rarely an MA/IDcode, a URL or something unknown.
Everything is derived from the caller's :class:`random.Random`, so a seed replays a
stream exactly; no value depends on the wall clock.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from scanfleet.daemon.core.model import Kind

GS = b"\x1d"

# Prefixes of 20-digit trace codes that biip 5.2 parses as a GS1 AI (codes.md §5.4):
# the classifier must not be fooled by them, so the mix contains them on purpose.
GS1_LOOKALIKE_PREFIXES = ("8200", "8020", "8110", "8004", "8013")

# Rough shares of reads at a Chinese pharmacy counter (weights, not probabilities).
DEFAULT_MIX: tuple[tuple[str, int], ...] = (
    ("trace20", 6200),
    ("trace20_special", 600),
    ("trace20_lookalike", 500),
    ("gs1_datamatrix", 1100),
    ("ean13", 1000),
    ("drug_standard_code", 300),
    ("ma", 100),
    ("url", 100),
    ("unknown", 100),
)

# GS1 country prefixes of typical drug exporters (Germany, UK, Switzerland, Italy,
# Netherlands, Denmark, France, USA-as-0): imported packs carry these GTINs.
_IMPORT_GTIN_PREFIXES = ("40", "50", "76", "80", "87", "57", "30", "03")


@dataclass(frozen=True)
class CodeSample:
    """One generated read: the data bytes, the AIM id a scanner would send, the expected kind."""

    data: bytes
    aim: str
    kind: Kind
    family: str
    """Which entry of :data:`DEFAULT_MIX` produced it (finer than ``kind``)."""

    def raw(self, *, aim: bool = False) -> bytes:
        """The bytes a scanner transmits before framing, with the AIM prefix when asked."""
        return (self.aim.encode("ascii") + self.data) if aim else self.data


def gs1_check_digit(digits: str) -> str:
    """The GS1 mod-10 check digit for *digits* (the number without its check digit)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        total += int(ch) * (3 if i % 2 == 0 else 1)
    return str((10 - total % 10) % 10)


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.digits) for _ in range(n))


def _alnum(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(n))


def _yymmdd(rng: random.Random) -> str:
    return f"{rng.randint(26, 31):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"


def _trace20(rng: random.Random, prefix: str = "8") -> str:
    # Printed as 药品标识码 (7) + 序列号 (13); serials seen in the field start with 0.
    return prefix + _digits(rng, 7 - len(prefix)) + "0" + _digits(rng, 12)


def _gtin14(rng: random.Random, country: str) -> str:
    body = "0" + country + _digits(rng, 12 - len(country))
    return body + gs1_check_digit(body)


def _sample(rng: random.Random, family: str) -> CodeSample:
    if family == "trace20":
        return CodeSample(
            _trace20(rng, "8" + str(rng.choice("1234567"))).encode(), "]C0", Kind.TRACE20, family
        )
    if family == "trace20_special":
        return CodeSample(_trace20(rng, "89").encode(), "]C0", Kind.TRACE20, family)
    if family == "trace20_lookalike":
        prefix = rng.choice(GS1_LOOKALIKE_PREFIXES)
        return CodeSample(_trace20(rng, prefix).encode(), "]C0", Kind.TRACE20, family)
    if family == "gs1_datamatrix":
        gtin = _gtin14(rng, rng.choice(_IMPORT_GTIN_PREFIXES))
        lot = _alnum(rng, rng.randint(4, 10))
        serial = _alnum(rng, rng.randint(8, 12))
        head = f"01{gtin}17{_yymmdd(rng)}10{lot}".encode()
        return CodeSample(head + GS + f"21{serial}".encode(), "]d2", Kind.GS1, family)
    if family == "ean13":
        body = "69" + str(rng.randint(0, 9)) + _digits(rng, 9)
        return CodeSample((body + gs1_check_digit(body)).encode(), "]E0", Kind.EAN13, family)
    if family == "drug_standard_code":
        body = "869" + _digits(rng, 10)
        return CodeSample(
            (body + gs1_check_digit(body)).encode(), "]C0", Kind.DRUG_STANDARD_CODE, family
        )
    if family == "ma":
        # MA/IDcode field layout from codes.md §2.2; its check character is issued by
        # the registry (no public algorithm), so the last field is only shaped right.
        text = (
            f"MA.156.M0.{_digits(rng, 6)}.{_digits(rng, 7)}.S{_alnum(rng, 10)}"
            f".P{_yymmdd(rng)}.L{_alnum(rng, 6)}.E{_yymmdd(rng)}.C{_alnum(rng, 1)}"
        )
        return CodeSample(text.encode(), "]Q1", Kind.MA, family)
    if family == "url":
        gtin = _gtin14(rng, "69" + str(rng.randint(0, 9)))
        text = f"https://id.gs1cn.org/01/{gtin}/10/{_alnum(rng, 6)}"
        return CodeSample(text.encode(), "]Q1", Kind.URL, family)
    if family == "unknown":
        # Internal shelf labels and loyalty cards: letters first, so no rule claims them.
        text = rng.choice(("SKU-", "LOC", "VIP", "X")) + _alnum(rng, rng.randint(5, 12))
        return CodeSample(text.encode(), "]C0", Kind.UNKNOWN, family)
    raise ValueError(f"unknown code family {family!r}")


def generate_sample(
    rng: random.Random, mix: tuple[tuple[str, int], ...] = DEFAULT_MIX
) -> CodeSample:
    """Draw one read from *mix* (default: :data:`DEFAULT_MIX`)."""
    families = [name for name, _ in mix]
    weights = [weight for _, weight in mix]
    return _sample(rng, rng.choices(families, weights)[0])


def generate_code(rng: random.Random, *, aim: bool = False) -> bytes:
    """One raw read from the default counter mix, with its AIM prefix when *aim* is true."""
    return generate_sample(rng).raw(aim=aim)
