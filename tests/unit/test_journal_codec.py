"""The journal's canonical JSON is byte-for-byte RFC 8785, whichever encoder makes it."""

from __future__ import annotations

import random
from typing import Any

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from scanfleet.daemon.journal.codec import Codec, builtin_dictionary, canonical
from support.scans import make_scan_body

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_canonical_equals_rfc8785_for_any_json(value: dict[str, Any]) -> None:
    try:
        expected = rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeEncodeError):
        return  # not representable (e.g. lone surrogates): canonical() raises too
    assert canonical(value) == expected


def test_canonical_equals_rfc8785_for_scan_records() -> None:
    rng = random.Random(12)
    for i in range(500):
        body = make_scan_body(i, rng)
        body["t_mono"] = rng.choice([0.0, 5.0, 1e21, 1e-7, 123.456, body["t_mono"]])
        assert canonical(body) == rfc8785.dumps(body)


def test_compressed_payload_inflates_to_the_exact_bytes() -> None:
    codec = Codec()
    codec.add(1, builtin_dictionary("sf-0a1b2c3d4e5f"))
    rng = random.Random(2)
    for i in range(200):
        payload = canonical(make_scan_body(i, rng))
        blob = codec.compress(1, payload)
        assert len(blob) < len(payload) / 2
        assert codec.decompress(1, blob) == payload
