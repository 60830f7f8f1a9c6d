"""The identity window: which scans pair with an ID-card read, and which are refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from scanfleet.daemon.core.config import IdentityCheckConfig
from scanfleet.daemon.core.model import ClockSync, Operation, Verdict
from scanfleet.daemon.core.personal import generate_keypair, open_personal
from scanfleet.daemon.core.records import IdentityBody, ReadSource, Stamp, StationContext
from scanfleet.daemon.intake.classify import classify
from scanfleet.daemon.intake.pairing import NO_WINDOW_REASON, IdentityRead, IdentityWindow
from scanfleet.drivers.idcard.text import CardRead, decode_text
from scanfleet.drivers.sim.idcard import SAMPLE_CARDS

CONTROLLED = classify(b"83711700173703755001")
OTHER_DRUG = classify(b"81234560000000000017")
KEYS = generate_keypair()


def _window(**kw: object) -> IdentityWindow:
    config = {"drug_prefixes": ["8371170"], "window_seconds": 120, "public_key": KEYS[1], **kw}
    return IdentityWindow(IdentityCheckConfig.model_validate(config))


STAMP = Stamp(
    time="2026-11-25T08:00:00Z",
    clock=ClockSync.SYNCED,
    t_mono=10.0,
    boot_id=None,
    source=ReadSource(driver="idcard_serial", device="idreader", port="/dev/ttyUSB0"),
)


def _card_read(name: str = "mainland") -> CardRead:
    sample = SAMPLE_CARDS[name]
    return CardRead(
        data=b"",
        t_mono=10.0,
        time=datetime(2026, 11, 25, 8, 0, tzinfo=UTC),
        card=decode_text(sample.text()),
        photo=sample.photo(),
        fingerprint=sample.fingerprint(),
    )


def test_a_listed_drug_without_an_open_window_is_refused() -> None:
    decision = _window().pair(CONTROLLED, 5.0)
    assert decision.identity_ref is None
    assert decision.refusal == NO_WINDOW_REASON


def test_a_listed_drug_inside_the_window_pairs_with_the_read() -> None:
    window = _window()
    window.open("dev-1:7", 100.0)
    assert window.pair(CONTROLLED, 150.0).identity_ref == "dev-1:7"


def test_other_drugs_never_carry_the_identity() -> None:
    window = _window()
    window.open("dev-1:7", 100.0)
    assert window.pair(OTHER_DRUG, 101.0).identity_ref is None
    assert window.pair(OTHER_DRUG, 101.0).refusal is None
    assert window.pair(classify(b"6901234567892"), 101.0).identity_ref is None


@pytest.mark.parametrize(
    "close", ["timeout", "next card", "bill end"], ids=lambda c: f"closed by {c}"
)
def test_the_window_closes_on_timeout_next_card_or_bill_end(close: str) -> None:
    window = _window(window_seconds=60)
    window.open("dev-1:7", 100.0)
    t = 120.0
    if close == "timeout":
        t = 160.5
    elif close == "next card":
        window.close("next ID card read")
    else:
        window.end_bill()
    assert window.pair(CONTROLLED, t).refusal == NO_WINDOW_REASON


def test_a_new_read_replaces_the_previous_customer() -> None:
    window = _window()
    window.open("dev-1:7", 100.0)
    window.close("next ID card read")
    window.open("dev-1:9", 110.0)
    assert window.pair(CONTROLLED, 111.0).identity_ref == "dev-1:9"


def _body(window: IdentityWindow, read: CardRead, station: str | None = None) -> IdentityBody:
    return window.identity_body(read, STAMP, StationContext(Operation.DISPENSE), station)


def test_identity_body_is_sealed_and_masked_only() -> None:
    body = _body(_window(), _card_read(), "window-1")
    text = repr(body) + repr(body.to_body())
    assert "11010519491231002X" not in text
    assert "张三丰" not in text
    assert body.masked == {"id_number": "110105********002X", "name": "张**"}
    assert body.verdict is Verdict.ACCEPTED
    assert body.station == "window-1"
    assert body.sealed is not None
    opened = open_personal(body.sealed, KEYS[0])
    assert opened["id_number"] == "11010519491231002X"
    assert "photo_wlt" not in opened
    assert "fingerprint" not in opened


def test_photo_is_sealed_only_when_configured() -> None:
    body = _body(_window(publish_photo=True), _card_read())
    assert body.sealed is not None
    assert "photo_wlt" in open_personal(body.sealed, KEYS[0])
    assert "photo_wlt" in body.sealed_fields


def test_a_card_failing_the_number_check_is_a_refused_read_with_its_reason() -> None:
    body = _body(_window(), _card_read("bad_check"))
    assert body.verdict is Verdict.REFUSED
    assert "check character" in str(body.reason)
    assert body.sealed is None
    assert "110105194912310021" not in repr(body)


def test_without_a_backend_key_identity_is_refused_not_stored_plain() -> None:
    body = _body(_window(public_key=None), _card_read())
    assert body.verdict is Verdict.REFUSED
    assert body.sealed is None
    assert "public key" in str(body.reason)


@pytest.mark.parametrize("name", ["hk_macau_taiwan", "foreign_2017", "foreign_2023"])
def test_permit_and_foreigner_cards_are_accepted(name: str) -> None:
    body = _body(_window(), _card_read(name))
    assert body.verdict is Verdict.ACCEPTED, body.reason


def test_identity_body_validates_as_the_published_model() -> None:
    body = _body(_window(), _card_read(), "window-1")
    record = {**body.to_body(), "device": "dev-1", "seq": 3, "id": "dev-1:3"}
    record |= {"prev_hash": "0" * 64, "hash": "a" * 64}
    assert IdentityRead.model_validate(record).masked.id_number == "110105********002X"
