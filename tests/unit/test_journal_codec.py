"""The journal's canonical JSON is byte-for-byte RFC 8785, whichever encoder makes it."""

from __future__ import annotations

import random
from typing import Any

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from scanfleet.daemon.journal.codec import (
    RESERVED_KEYS,
    Codec,
    Encoded,
    RecordError,
    builtin_dictionary,
    canonical,
    encode_device,
    seal,
    seal_encoded,
)
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


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(st.text(max_size=8), json_values, max_size=6),
    st.sampled_from(["dev-1", "sf-0a1b2c3d4e5f", 'dév"1']),
    st.integers(min_value=1, max_value=2**40),
)
def test_a_body_serialized_once_seals_to_the_same_bytes_as_seal(
    body: dict[str, Any], device: str, seq: int
) -> None:
    body = {k: v for k, v in body.items() if k not in RESERVED_KEYS}
    prev = "ab" * 32
    try:
        record, payload = seal(body, device, seq, prev)
    except (RecordError, UnicodeEncodeError):
        return  # not representable: the lean path gives the same error
    hash_hex, lean = seal_encoded(Encoded(body), encode_device(device), seq, prev)
    assert (hash_hex, lean) == (record["hash"], payload)


def test_a_body_value_that_mimics_a_mark_takes_the_slow_path_with_the_same_bytes() -> None:
    body = {"a": "\x00scanfleet-seq\x00", "b": ["\x00scanfleet-hash\x00"]}
    encoded = Encoded(body)
    assert encoded.parts is None
    record, payload = seal(body, "dev-1", 7, "0" * 64)
    assert seal_encoded(encoded, encode_device("dev-1"), 7, "0" * 64) == (record["hash"], payload)


def test_scan_records_take_the_lean_path() -> None:
    rng = random.Random(3)
    for i in range(200):
        body = make_scan_body(i, rng)
        encoded = Encoded(body)
        assert encoded.parts is not None
        _, payload = seal(body, "dev-1", i + 1, "0" * 64)
        assert seal_encoded(encoded, encode_device("dev-1"), i + 1, "0" * 64)[1] == payload


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
