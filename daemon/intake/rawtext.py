"""The lossless text form of a raw read (the ``raw`` field of parse results and scans).

Printable ASCII (0x20-0x7E) stands for itself, except the backslash, which is written
``\\\\``; every other byte is ``\\xNN`` with lowercase hex. The form is canonical: each
byte string has exactly one text form, so :func:`unescape_raw` accepts nothing that
:func:`escape_raw` would not produce, and the two round-trip for every byte string.
"""

from __future__ import annotations

import re

# Latin-1 decoding maps byte N to code point N, so one str.translate escapes a read.
_ESCAPES: dict[int, str] = {b: f"\\x{b:02x}" for b in range(256) if not 0x20 <= b <= 0x7E}
_ESCAPES[0x5C] = "\\\\"

# One token of the text form: an escape, or a run of printable ASCII without backslash.
_TOKEN = re.compile(r"\\(?:\\|x([0-9a-f]{2}))|([\x20-\x5b\x5d-\x7e]+)")


def escape_raw(data: bytes) -> str:
    """The text form of *data* (see the module docstring)."""
    return bytes(data).decode("latin-1").translate(_ESCAPES)


def unescape_raw(text: str) -> bytes:
    """The bytes whose text form is *text*; ``ValueError`` if *text* is not such a form."""
    out = bytearray()
    pos = 0
    end = len(text)
    while pos < end:
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"not a raw text form at offset {pos}: {text[pos : pos + 4]!r}")
        hex_byte, plain = match.group(1, 2)
        if plain is not None:
            out += plain.encode("ascii")
        elif hex_byte is not None:
            byte = int(hex_byte, 16)
            if 0x20 <= byte <= 0x7E:
                # Canonical form only: a printable byte (backslash included) is never \xNN.
                raise ValueError(f"printable byte written as an escape at offset {pos}")
            out.append(byte)
        else:
            out.append(0x5C)
        pos = match.end()
    return bytes(out)
