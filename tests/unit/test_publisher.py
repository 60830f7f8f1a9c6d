"""The publisher's rules that need no broker: batching, the watermark, the envelope, backoff.

Batches are cut from real journal files; acks are fed to the tracker in the orders
a broker may produce them.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import rfc8785

from scanfleet.daemon.core.backoff import Backoff
from scanfleet.daemon.journal.journal import Journal
from scanfleet.daemon.publish.delivery import Ack, Batch, BatchCutter, DeliveryTracker
from scanfleet.daemon.publish.envelope import DeviceState, ScanBatch, build_batch, state_payload
from scanfleet.daemon.publish.status import StatusFile, read_status, status_age_s
from scanfleet.daemon.schemas import message_models
from support.scans import make_scan_body

DEVICE = "sf-0123456789ab"


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journal]:
    """A real journal file holding 1 200 realistic scan records (only read by the tests)."""
    rng = random.Random(7)
    with Journal.open(tmp_path_factory.mktemp("journal") / "journal.sqlite3", DEVICE) as j:
        for i in range(1200):
            j.append(make_scan_body(i, rng))
        yield j


def _batch(first: int, last: int) -> Batch:
    return Batch(first, last, b"")


# -- batching ---------------------------------------------------------------------------


def test_a_drain_batch_holds_at_most_max_scans_records(journal: Journal) -> None:
    cutter = BatchCutter(DEVICE, max_scans=100, max_bytes=10 << 20)
    batch = cutter.cut(journal, 1)
    assert isinstance(batch, Batch)
    assert (batch.first_seq, batch.last_seq) == (1, 100)
    assert json.loads(batch.payload)["last_seq"] == 100


def test_a_drain_batch_payload_stays_within_max_bytes(journal: Journal) -> None:
    cutter = BatchCutter(DEVICE, max_scans=500, max_bytes=16 * 1024)
    next_seq = 1
    sizes = []
    while (batch := cutter.cut(journal, next_seq)) is not None:
        assert isinstance(batch, Batch)
        assert len(batch.payload) <= 16 * 1024
        sizes.append(batch.count)
        next_seq = batch.last_seq + 1
    assert next_seq == journal.last_seq + 1, "batches must cover every record, gapless"
    assert max(sizes) > 1, "a 16 KiB bound still packs several scans per batch"


def test_a_record_larger_than_the_byte_bound_goes_out_alone(journal: Journal) -> None:
    cutter = BatchCutter(DEVICE, max_scans=500, max_bytes=100)
    batch = cutter.cut(journal, 5)
    assert batch is not None
    assert (batch.first_seq, batch.last_seq) == (5, 5)


def test_nothing_to_cut_after_the_last_record(journal: Journal) -> None:
    cutter = BatchCutter(DEVICE, max_scans=500, max_bytes=256 * 1024)
    assert cutter.cut(journal, journal.last_seq + 1) is None


def test_envelope_embeds_the_journal_records_byte_identical(journal: Journal) -> None:
    cutter = BatchCutter(DEVICE, max_scans=50, max_bytes=256 * 1024)
    batch = cutter.cut(journal, 301)
    assert isinstance(batch, Batch)
    stored = journal.read_after(300, limit=batch.count, max_bytes=1 << 30)
    for record in stored:
        assert record.payload in batch.payload
    envelope = ScanBatch.model_validate_json(batch.payload)
    assert envelope.first_seq == 301
    assert envelope.last_seq == 301 + len(stored) - 1
    for record, scan in zip(stored, envelope.scans, strict=True):
        # What the backend receives re-canonicalises to the stored bytes and its hash checks.
        assert rfc8785.dumps(scan) == record.payload
        without_hash = {k: v for k, v in scan.items() if k != "hash"}
        assert hashlib.sha256(rfc8785.dumps(without_hash)).hexdigest() == scan["hash"]


def test_envelope_refuses_records_that_are_not_contiguous() -> None:
    payloads = [json.dumps({"device": DEVICE, "seq": s}).encode() for s in (3, 5)]
    with pytest.raises(ValueError, match="in order"):
        ScanBatch.model_validate_json(build_batch(DEVICE, 3, payloads))


def test_envelope_and_state_are_registered_message_schemas() -> None:
    models = message_models()
    assert models["scan-batch"] is ScanBatch
    assert models["state"] is DeviceState


def test_state_payload_names_its_schema_on_the_wire() -> None:
    state = DeviceState.model_validate(
        {
            "device": DEVICE,
            "site": "clinic-7",
            "online": False,
            "version": "0.1.0",
            "boot_id": None,
            "time": "2026-11-25T01:00:00Z",
        }
    )
    assert json.loads(state_payload(state))["schema"] == "scanfleet.state/1"


# -- the watermark ----------------------------------------------------------------------


def test_watermark_moves_only_over_the_contiguous_prefix_of_acked_batches() -> None:
    tracker = DeliveryTracker(delivered_seq=0)
    for mid, (first, last) in enumerate([(1, 10), (11, 20), (21, 30), (31, 40)], start=1):
        tracker.sent(mid, _batch(first, last))
    assert tracker.acked(3, 0) is Ack.DELIVERED
    assert tracker.acked(2, 0) is Ack.DELIVERED
    assert not tracker.advance(), "batch 1..10 is not acked yet"
    assert tracker.delivered_seq == 0
    assert tracker.acked(1, 0) is Ack.DELIVERED
    assert tracker.advance()
    assert tracker.delivered_seq == 30
    assert tracker.acked(4, 0) is Ack.DELIVERED
    tracker.advance()
    assert tracker.delivered_seq == 40


def test_a_refused_batch_holds_back_every_later_ack() -> None:
    tracker = DeliveryTracker(delivered_seq=100)
    tracker.sent(1, _batch(101, 101))
    tracker.sent(2, _batch(102, 110))
    assert tracker.acked(1, 0x87, "Not authorized") is Ack.REFUSED
    assert tracker.acked(2, 0x00) is Ack.DELIVERED
    assert not tracker.advance()
    assert tracker.delivered_seq == 100
    assert [(r.first_seq, r.code) for r in tracker.refusals] == [(101, 0x87)]


@pytest.mark.parametrize("code", [0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99])
def test_every_reason_code_from_0x80_up_is_a_refusal(code: int) -> None:
    tracker = DeliveryTracker(delivered_seq=0)
    tracker.sent(7, _batch(1, 1))
    assert tracker.acked(7, code) is Ack.REFUSED
    assert not tracker.advance()


def test_no_matching_subscribers_counts_as_delivered() -> None:
    tracker = DeliveryTracker(delivered_seq=0)
    tracker.sent(1, _batch(1, 5))
    assert tracker.acked(1, 0x10, "No matching subscribers") is Ack.NO_SUBSCRIBERS
    assert tracker.advance()
    assert tracker.delivered_seq == 5


def test_a_new_connection_resends_everything_after_the_watermark() -> None:
    tracker = DeliveryTracker(delivered_seq=0)
    tracker.sent(1, _batch(1, 10))
    tracker.sent(2, _batch(11, 20))
    tracker.sent(3, _batch(21, 30))
    tracker.acked(1, 0)
    tracker.acked(3, 0)  # acked beyond a gap: forgotten, resent, deduplicated by id
    tracker.advance()
    tracker.restart()
    assert tracker.next_seq == 11
    assert tracker.inflight == 0
    assert tracker.acked(2, 0) is Ack.UNKNOWN, "acks of the old connection mean nothing"


def test_batches_must_follow_each_other_in_seq_order() -> None:
    tracker = DeliveryTracker(delivered_seq=0)
    tracker.sent(1, _batch(1, 10))
    with pytest.raises(ValueError, match="expected 11"):
        tracker.sent(2, _batch(12, 20))


# -- backoff ----------------------------------------------------------------------------


def test_backoff_grows_exponentially_up_to_its_cap_with_jitter() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, rng=random.Random(1))
    delays = [backoff.next() for _ in range(40)]
    ceilings = [min(30.0, 0.5 * 2**n) for n in range(40)]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    assert max(delays) <= 30.0
    capped = delays[10:]
    assert len(set(capped)) == len(capped), "jitter: capped delays are not all the same"


def test_backoff_starts_small_again_after_a_reset() -> None:
    backoff = Backoff(initial=1.0, maximum=60.0, rng=random.Random(2))
    for _ in range(10):
        backoff.next()
    backoff.reset()
    assert backoff.next() <= 1.0


def test_backoff_rejects_a_cap_below_its_start() -> None:
    with pytest.raises(ValueError):
        Backoff(initial=5.0, maximum=1.0)


def test_a_live_batch_ack_never_moves_the_watermark() -> None:
    tracker = DeliveryTracker(delivered_seq=0)
    tracker.sent(1, _batch(1, 500))
    tracker.sent_live(2, _batch(9000, 9000))
    assert (tracker.inflight, tracker.live_inflight) == (1, 1)
    assert tracker.acked(2, 0) is Ack.DELIVERED
    assert not tracker.advance(), "seq 9000 is delivered again, in order, later"
    assert tracker.acked(1, 0) is Ack.DELIVERED
    tracker.advance()
    assert tracker.delivered_seq == 500
    assert tracker.next_seq == 501


def test_a_live_batch_must_lie_ahead_of_the_in_order_cursor() -> None:
    tracker = DeliveryTracker(delivered_seq=0)
    tracker.sent(1, _batch(1, 10))
    with pytest.raises(ValueError, match="not ahead"):
        tracker.sent_live(2, _batch(5, 5))


def test_a_refused_live_batch_is_a_refusal_too() -> None:
    tracker = DeliveryTracker(delivered_seq=0)
    tracker.sent_live(1, _batch(40, 40))
    assert tracker.acked(1, 0x97, "Quota exceeded") is Ack.REFUSED
    assert tracker.refusals[0].first_seq == 40
    assert tracker.live_inflight == 0


# -- status file ------------------------------------------------------------------------


def test_status_file_is_rewritten_on_change_but_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    status = StatusFile(path, min_interval=3600.0, heartbeat=7200.0)
    assert status.update({"delivered_seq": 1})
    assert not status.update({"delivered_seq": 2}), "rate-limited"
    assert json.loads(path.read_text())["delivered_seq"] == 1
    assert status.update({"delivered_seq": 3}, force=True), "state transitions go out at once"
    document = read_status(path)
    assert document is not None
    assert document["delivered_seq"] == 3
    assert document["schema"] == "scanfleet.status/1"
    assert status_age_s(document) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["status.json", "status.json.slot"], (
        "no temporary file left (the slot is preallocated for a full disk)"
    )


def test_an_unchanged_status_is_rewritten_only_as_a_heartbeat(tmp_path: Path) -> None:
    status = StatusFile(tmp_path / "status.json", min_interval=0.0, heartbeat=3600.0)
    assert status.update({"a": 1})
    assert not status.update({"a": 1})
    assert status.update({"a": 2})


def test_a_missing_or_garbled_status_file_reads_as_none(tmp_path: Path) -> None:
    assert read_status(tmp_path / "status.json") is None
    (tmp_path / "status.json").write_text("{not json", encoding="utf-8")
    assert read_status(tmp_path / "status.json") is None
