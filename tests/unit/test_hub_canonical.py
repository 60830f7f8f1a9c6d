"""The ingest's shortcuts are exact: the hash check on received bytes, the one-pass envelope.

``hash_matches`` skips encoding a record when ``is_canonical_flat`` proves its bytes are
already its RFC 8785 form; ``split_records`` decodes an envelope built the daemon's way
in one pass. Both must give exactly what the general way gives, for any input.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given, reject, settings
from hypothesis import strategies as st

from scanfleet.daemon.journal.codec import RecordError, record_hash
from scanfleet.hub.records import (
    MessageError,
    _split_any,
    _split_as_built,
    hash_matches,
    is_canonical_flat,
    parse_scans,
    parse_topic,
)
from support.hub import Chain

# Strings with what RFC 8785 escapes or orders specially: quotes, backslashes, control
# characters, U+2028, DEL, astral characters (UTF-16 order differs from code points).
odd_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"])
    | st.sampled_from(['"', "\\", "\n", "\x00", "\x1f", "\x7f", "\u2028", "\ue000", "😀", "/"]),
    max_size=12,
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.sampled_from([0, -1, 2**53 - 1, 2**53, -(2**53) + 1, -(2**53)])
    | st.floats(allow_nan=False, allow_infinity=False)
    | odd_text
)
json_values = st.recursive(
    scalars,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(odd_text, kids, max_size=3),
    max_leaves=6,
)
records = st.dictionaries(odd_text | st.sampled_from(["device", "seq", "id", "time"]), json_values)


def _variants(record: dict[str, Any]) -> list[str]:
    """The canonical text of *record* and texts that decode to the same record but are not."""
    canonical = rfc8785.dumps(record).decode()
    out = [
        canonical,
        json.dumps(record, ensure_ascii=True, sort_keys=True, separators=(",", ":")),
        json.dumps(record, ensure_ascii=False, sort_keys=True),
        json.dumps(dict(reversed(record.items())), ensure_ascii=False, separators=(",", ":")),
        canonical.replace(":0,", ":-0,", 1).replace(":0}", ":-0}", 1),
        canonical.replace(":1,", ":1.0,", 1),
        canonical.replace('","', '", "', 1),
    ]
    first = next(iter(record))
    member = json.dumps(first, ensure_ascii=False) + ":" + json.dumps(record[first])
    out.append("{" + member + "," + canonical[1:])  # a duplicate member (same value)
    return out


def _hash_of(rest: dict[str, Any]) -> str | None:
    try:
        return record_hash(rest)
    except RecordError:
        return None


@settings(max_examples=600, deadline=None)
@given(records, st.booleans())
def test_the_hash_check_on_received_bytes_agrees_with_encoding_the_record(
    rest: dict[str, Any], genuine: bool
) -> None:
    rest.pop("hash", None)
    correct = _hash_of(rest)
    if correct is None:
        reject()  # discards the example, as assume() would
    claimed = correct if genuine else hashlib.sha256(b"other").hexdigest()
    full = {**rest, "hash": claimed}
    for text in _variants(full):
        decoded = json.loads(text)
        if is_canonical_flat(decoded, text):
            # The shortcut is only ever taken on the canonical bytes themselves.
            assert text.encode() == rfc8785.dumps(decoded)
        expected = _hash_of({k: v for k, v in decoded.items() if k != "hash"}) == claimed
        assert hash_matches(decoded, text, claimed) is expected


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["a", "b", "kind", "seq", "value", "z"]), scalars))
def test_flat_canonical_records_take_the_shortcut(record: dict[str, Any]) -> None:
    try:
        text = rfc8785.dumps(record).decode()
    except rfc8785.CanonicalizationError:
        return  # beyond RFC 8785's integers: no canonical form to recognise
    flat = all(
        not isinstance(v, float) and not (isinstance(v, int) and abs(v) >= 2**53)
        for v in record.values()
    ) and all(not isinstance(v, str) or v == json.loads(json.dumps(v)) for v in record.values())
    taken = is_canonical_flat(json.loads(text), text)
    if taken:
        assert text.encode() == rfc8785.dumps(json.loads(text))
    if flat and "\\" not in text and record:
        assert taken


def test_terminal_records_take_the_shortcut_and_tampered_ones_fail_it() -> None:
    chain = Chain("site-u", "sf-0000000000cc")
    chain.add(value="中文 \u2028 é")
    text = chain.payloads[1].decode()
    record = json.loads(text)
    assert is_canonical_flat(record, text)
    assert hash_matches(record, text, record["hash"])
    tampered = text.replace('"accepted"', '"refused"')
    assert not hash_matches(json.loads(tampered), tampered, record["hash"])
    # An escape the canonical form would not write: decoded the same, encoded again.
    escaped = text.replace('"accepted"', '"\\u0061ccepted"')
    assert not is_canonical_flat(json.loads(escaped), escaped)
    assert hash_matches(json.loads(escaped), escaped, record["hash"])


def _envelopes() -> list[bytes]:
    chain = Chain("site-u", "sf-0000000000cc")
    for _ in range(3):
        chain.add()
    built = chain.batch(1, 3)
    return [
        built,
        built.replace(b"[", b"[ ", 1),
        built.replace(b"]}", b"] }"),
        built.replace(b"]}", b'],"extra":1}'),
        built.replace(b'{"schema"', b'{"scans":0,"schema"', 1),
        built.replace(b"]}", b'],"scans":[]}'),
        built[:-2] + b",1]}",
        built + b" ",
        built.replace(b'"scanfleet.scan-batch/1"', b'"other"'),
        built[:-1],
    ]


@pytest.mark.parametrize("payload", _envelopes())
def test_the_one_pass_envelope_split_gives_what_the_general_one_gives(payload: bytes) -> None:
    text = payload.decode()
    try:
        general: Any = _split_any(text)
    except MessageError as err:
        general = type(err)
    try:
        fast: Any = _split_as_built(text)
    except MessageError as err:
        fast = type(err)
    assert fast is None or fast == general


flat_records = st.dictionaries(
    st.sampled_from(["a", "b", "hash", "kind", "seq", "value", "zz"]),
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats() | odd_text,
    min_size=1,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(flat_records, min_size=1, max_size=4), st.integers(0, 7), st.data())
def test_envelopes_of_any_records_split_the_same_both_ways(
    records: list[dict[str, Any]], how: int, data: st.DataObject
) -> None:
    texts = []
    for record in records:
        try:
            variants = _variants(record)
        except rfc8785.CanonicalizationError:
            return
        texts.append(variants[0] if how == 0 else data.draw(st.sampled_from(variants)))
    head = '{"schema":"scanfleet.scan-batch/1","device":"d","first_seq":1,"last_seq":1,'
    tail = ["]}", "] }", '],"x":1}', '],"scans":[{}]}'][how % 4]
    for sep in (",", ", "):
        test_the_one_pass_envelope_split_gives_what_the_general_one_gives(
            (head + '"scans":[' + sep.join(texts) + tail).encode()
        )


def test_numbers_beyond_their_columns_are_refused() -> None:
    chain = Chain("site-u", "sf-0000000000cc")
    chain.add(split_unit=2**31, split_units=2**31)
    with pytest.raises(MessageError, match="does not fit"):
        parse_scans(parse_topic(chain.topic), chain.batch(1, 1))
