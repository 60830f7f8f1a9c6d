"""The hub's parsing of what arrives: exact record bytes, checks, declared losses, ranges."""

from __future__ import annotations

import json

import pytest

from scanfleet.daemon.publish.envelope import build_batch
from scanfleet.hub.ranges import from_points, intersect, size, subtract
from scanfleet.hub.records import MessageError, parse_scans, parse_topic, split_records
from support.hub import Chain

SITE, DEVICE = "site-u", "sf-0000000000cc"


def test_each_record_keeps_the_exact_bytes_the_terminal_hashed() -> None:
    chain = Chain(SITE, DEVICE)
    for _ in range(3):
        chain.add(value="中文 and \\u escapes \u2028")
    rows = parse_scans(parse_topic(chain.topic), chain.batch(1, 3))
    assert [r.payload for r in rows] == [chain.payloads[s] for s in (1, 2, 3)]
    assert all(r.hash_ok for r in rows)
    assert [r.link_seq for r in rows] == [None, 1, 2]


def test_whitespace_between_records_does_not_change_their_bytes() -> None:
    chain = Chain(SITE, DEVICE)
    chain.add()
    chain.add()
    spaced = build_batch(DEVICE, 1, [chain.payloads[1]]).replace(b"[", b"[ \n", 1)[:-2]
    spaced += b" ,\n " + chain.payloads[2] + b" ]}"
    spaced = spaced.replace(b'"last_seq":1', b'"last_seq":2')
    _, records = split_records(spaced)
    assert [raw for _, raw in records] == [chain.payloads[1], chain.payloads[2]]


def test_a_record_whose_bytes_do_not_match_its_hash_is_marked() -> None:
    chain = Chain(SITE, DEVICE)
    chain.add()
    record = json.loads(chain.payloads[1])
    record["verdict"] = "refused"
    body = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    (row,) = parse_scans(parse_topic(chain.topic), build_batch(DEVICE, 1, [body]))
    assert not row.hash_ok


@pytest.mark.parametrize(
    ("topic", "payload"),
    [
        ("scanfleet/v1/site-u/sf-0000000000cc/scans", b"not json"),
        ("scanfleet/v1/site-u/sf-0000000000cc/scans", b'{"schema":"other"}'),
        ("scanfleet/v1/site-u/sf-0000000000cc/scans", b'{"schema":"scanfleet.scan-batch/1"}'),
        ("scanfleet/v1/site-u/sf-0000000000dd/scans", None),  # another device's topic
        ("scanfleet/v1/site-u/sf-0000000000cc/other", None),
        ("elsewhere/v1/site-u/sf-0000000000cc/scans", None),
    ],
)
def test_unusable_messages_are_refused_with_a_reason(topic: str, payload: bytes | None) -> None:
    chain = Chain(SITE, DEVICE)
    chain.add()
    with pytest.raises(MessageError):
        parse_scans(parse_topic(topic), payload if payload is not None else chain.batch(1, 1))


def test_a_journal_loss_explains_its_ranges_and_a_chain_restart() -> None:
    chain = Chain(SITE, DEVICE)
    chain.seq = 1_700_000_000_000
    chain.add(
        type="journal_loss",
        lost=[{"first_seq": 5, "last_seq": 9}, {"first_seq": 20, "last_seq": 20}],
        reason="card died",
        epoch=1,
        anchor_seq=0,
    )
    (row,) = parse_scans(parse_topic(chain.topic), chain.batch(chain.seq, chain.seq))
    assert [(x.from_seq, x.to_seq) for x in row.losses] == [(5, 9), (20, 20), (21, chain.seq - 1)]
    assert row.losses[0].reason == "card died"
    assert row.link_seq is None  # the chain restarted: nothing to link to


def test_range_arithmetic() -> None:
    assert from_points([5, 1, 2, 3, 7, 6]) == [(1, 3), (5, 7)]
    assert subtract([(1, 10)], [(3, 4), (8, 20)]) == [(1, 2), (5, 7)]
    assert intersect([(1, 10), (15, 20)], [(5, 16)]) == [(5, 10), (15, 16)]
    assert size([(1, 3), (5, 5)]) == 4
