"""Classification of raw reads (issue 2 item 5) and the lossless raw text form.

The golden vectors in tests/data/classify/ pin the full output for every rule and
edge case; the tests here state the rules themselves, so a vector that drifts from
the rules is caught twice.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from biip import ParseError
from biip.gs1_messages import GS1Message
from hypothesis import given, settings
from hypothesis import strategies as st

from scanfleet.daemon.core.model import Kind, ParseResult
from scanfleet.daemon.intake.classify import MAX_RAW, classify, gs1_check_digit_ok
from scanfleet.daemon.intake.rawtext import escape_raw, unescape_raw
from scanfleet.drivers.sim.codes import GS1_LOOKALIKE_PREFIXES, generate_sample

ROOT = Path(__file__).resolve().parents[2]
VECTOR_DIR = ROOT / "tests" / "data" / "classify"
GS = b"\x1d"
DATAMATRIX = b"0109501101020917" + b"17270630" + b"101234A" + GS + b"21SN0001"


def load_vectors() -> list[dict[str, Any]]:
    """Every golden vector, in file order."""
    vectors = []
    for path in sorted(VECTOR_DIR.glob("*.jsonl")):
        for line in path.read_text(encoding="ascii").split("\n"):
            if line:
                vectors.append(json.loads(line))
    return vectors


VECTORS = load_vectors()


def test_golden_vectors_cover_every_kind() -> None:
    assert {v["expect"]["kind"] for v in VECTORS} == {str(k) for k in Kind}
    assert len({v["name"] for v in VECTORS}) == len(VECTORS), "vector names must be unique"


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_golden_vector(vector: dict[str, Any]) -> None:
    raw = unescape_raw(vector["input"])
    result = classify(raw, aim=vector.get("aim"), fnc1_substitute=vector.get("fnc1"))
    assert result.model_dump(mode="json") == vector["expect"]
    # The result is a valid ParseResult, not only a constructed one.
    ParseResult.model_validate(vector["expect"])


def test_trace_code_behind_code128_aim_keeps_its_drug_id() -> None:
    result = classify(b"]C082001234567890123456\n")
    assert (result.kind, result.aim, result.fields["drug_id"]) == (Kind.TRACE20, "]C0", "8200123")
    assert result.fields["serial"] == "4567890123456"


@pytest.mark.parametrize("aim", [b"]d2", b""], ids=["with-d2", "without-aim"])
def test_gs1_datamatrix_parses_into_all_four_fields(aim: bytes) -> None:
    result = classify(aim + DATAMATRIX + b"\r")
    assert result.kind is Kind.GS1
    assert result.value == DATAMATRIX.decode()
    assert {k: result.fields[k] for k in ("gtin", "expiry", "batch", "serial")} == {
        "gtin": "09501101020917",
        "expiry": "2027-06-30",
        "batch": "1234A",
        "serial": "SN0001",
    }
    assert result.fields["gtin_valid"] is True
    assert result.fields["hri"] == "(01)09501101020917(17)270630(10)1234A(21)SN0001"
    assert result.problems == []


@pytest.mark.parametrize("prefix", GS1_LOOKALIKE_PREFIXES)
def test_trace_code_that_biip_takes_for_gs1_is_trace20(prefix: str) -> None:
    code = prefix + "0" * (20 - len(prefix) - 3) + "417"
    # The trap is real: biip on its own parses it as a GS1 element string.
    assert GS1Message.parse(code).element_strings[0].ai.ai == prefix
    result = classify(code.encode())
    assert result.kind is Kind.TRACE20
    assert result.fields["drug_id"] == code[:7]
    assert result.problems == []


@pytest.mark.parametrize("code", ["00069012345678901231", "01069012345678921012"])
def test_twenty_alphanumerics_without_gs1_aim_are_trace_other_even_if_biip_parses(
    code: str,
) -> None:
    assert GS1Message.parse(code).element_strings
    assert classify(code.encode()).kind is Kind.TRACE_OTHER
    assert classify(b"]C1" + code.encode()).kind is Kind.GS1


@pytest.mark.parametrize("last", "0123456789")
def test_trace20_has_no_invented_check_digit(last: str) -> None:
    result = classify(("8371170017370375500" + last).encode())
    assert result.kind is Kind.TRACE20
    assert result.problems == []
    assert set(result.fields) == {"drug_id", "serial", "special_drug"}


def test_special_drug_flag_follows_the_89_prefix() -> None:
    assert classify(b"89012340123456789012").fields["special_drug"] is True
    assert classify(b"88012340123456789012").fields["special_drug"] is False


@pytest.mark.parametrize(
    ("raw", "kind", "flag"),
    [
        (b"6901234567890", Kind.EAN13, "check_valid"),
        (b"]E469012340", Kind.EAN13, "check_valid"),
        (b"86912345678900", Kind.DRUG_STANDARD_CODE, "check_valid"),
        (b"]d20109501101020918" + b"10A", Kind.GS1, "gtin_valid"),
        (b"https://id.gs1.org/01/06901234567893", Kind.URL, "gtin_valid"),
    ],
)
def test_failed_check_digit_is_a_flag_and_a_problem_never_another_kind(
    raw: bytes, kind: Kind, flag: str
) -> None:
    result = classify(raw)
    assert result.kind is kind
    assert result.fields[flag] is False
    assert any("check digit" in p for p in result.problems)


def test_gs1_check_digit_matches_known_numbers() -> None:
    for number in ("6901234567892", "4006381333931", "09501101020917", "036000291452", "69012341"):
        assert gs1_check_digit_ok(number) == (True, int(number[-1]))
    assert gs1_check_digit_ok("6901234567890") == (False, 2)


def test_aim_prefix_in_the_data_wins_over_the_transport() -> None:
    result = classify(b"]E06901234567892", aim="]C0")
    assert result.aim == "]E0"
    assert result.kind is Kind.EAN13
    assert result.problems == ["transport reported symbology ]C0 but the data carries ]E0"]


def test_transport_aim_alone_decides_like_an_in_band_prefix() -> None:
    assert classify(DATAMATRIX.replace(GS, b""), aim="]d2").kind is Kind.GS1
    ean8 = classify(b"69012341", aim="]E4")
    assert (ean8.kind, ean8.aim, ean8.fields["format"]) == (Kind.EAN13, "]E4", "EAN-8")


def test_fnc1_substitute_becomes_gs_in_the_value_but_not_in_raw() -> None:
    read = DATAMATRIX.replace(GS, b"|")
    result = classify(read, fnc1_substitute="|")
    assert result.kind is Kind.GS1
    assert result.value == DATAMATRIX.decode()
    assert result.raw == read.decode()
    assert result.fields["serial"] == "SN0001"


def test_fnc1_substitute_in_non_gs1_data_stays_data() -> None:
    result = classify(b"MA.156.M0.100001.1234567.L12#4", fnc1_substitute="#")
    assert result.kind is Kind.MA
    assert result.fields["batch"] == "12#4"


def test_terminators_and_stx_framing_are_stripped_and_recorded() -> None:
    result = classify(b"\x02]C083711700173703755001\x03\r\n")
    assert (result.kind, result.value, result.aim) == (Kind.TRACE20, "83711700173703755001", "]C0")
    assert result.fields["terminator"] == "\\x03\\x0d\\x0a"
    assert result.fields["stx"] is True
    assert unescape_raw(result.raw) == b"\x02]C083711700173703755001\x03\r\n"


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"8" * (MAX_RAW + 1), "over the 4096-byte limit"),
        (b"\xc3\x2883711700173703755001", "not UTF-8"),
        (b"8371170\x000173703755001", "control character U+0000"),
        (b"", "empty read"),
    ],
    ids=["over-4KiB", "invalid-utf8", "nul", "empty"],
)
def test_unreadable_input_is_unknown_with_a_reason(raw: bytes, problem: str) -> None:
    result = classify(raw)
    assert result.kind is Kind.UNKNOWN
    assert any(problem in p for p in result.problems)
    assert unescape_raw(result.raw) == raw


def test_input_of_exactly_4kib_is_still_examined() -> None:
    result = classify(b"]C0" + b"A" * (MAX_RAW - 3))
    assert result.aim == "]C0"
    assert result.problems == ["matches no known code shape"]


def test_the_simulated_counter_mix_classifies_as_generated() -> None:
    rng = random.Random(20261125)
    for _ in range(2000):
        sample = generate_sample(rng)
        for with_aim in (True, False):
            result = classify(sample.raw(aim=with_aim) + b"\r")
            assert result.kind is sample.kind, (sample, result)
            if sample.kind is not Kind.UNKNOWN:
                assert result.problems == [], (sample, result)


def test_every_kind_is_documented() -> None:
    doc = (ROOT / "docs" / "code-kinds.md").read_text(encoding="utf-8")
    for kind in Kind:
        assert f"`{kind}`" in doc


# Reads shaped like the real thing, so the property tests reach every rule, not
# only "unknown": an optional AIM prefix, code-like bodies, GS, terminators.
_AIMS = st.sampled_from(["", "]C0", "]C1", "]d2", "]Q3", "]E0", "]E4", "]e0", "]Q1", "]Z9"])
_BODIES = st.one_of(
    st.from_regex(r"8[0-9]{19}", fullmatch=True),
    st.from_regex(r"[0-9]{8,14}", fullmatch=True),
    st.from_regex(r"01[0-9]{14}(17[0-9]{6})?(10[A-Z0-9]{1,8})?", fullmatch=True),
    st.from_regex(r"MA\.[0-9.A-Z]{0,30}", fullmatch=True),
    st.from_regex(
        r"(https?|HTTPS)://[a-z.]{0,12}(/01/[0-9]{0,14})?[/#?=a-z0-9]{0,10}", fullmatch=True
    ),
    st.from_regex(r"[0-9A-Za-z|~#\x1d]{1,30}", fullmatch=True),
    st.text(max_size=40),
)
_READS = st.builds(
    lambda aim, body, tail: aim.encode() + body.encode("utf-8", "surrogatepass") + tail,
    _AIMS,
    _BODIES,
    st.sampled_from([b"", b"\r", b"\r\n", b"\t", b"\x03", b"\x1d"]),
)


@settings(max_examples=600, deadline=None)
@given(
    raw=st.one_of(st.binary(max_size=64), _READS, st.binary(min_size=4090, max_size=4100)),
    aim=st.one_of(st.none(), _AIMS, st.text(max_size=4)),
    substitute=st.one_of(st.none(), st.sampled_from(["|", "~", "#", "0"]), st.text(max_size=2)),
)
def test_classify_never_raises_and_keeps_raw_lossless(
    raw: bytes, aim: str | None, substitute: str | None
) -> None:
    result = classify(raw, aim=aim, fnc1_substitute=substitute)
    assert unescape_raw(result.raw) == raw
    assert not any(p.startswith("internal error") for p in result.problems), result
    # What was built without validation must still pass validation.
    assert ParseResult.model_validate(result.model_dump()) == result
    json.dumps(result.model_dump(mode="json"))


@given(st.binary(max_size=300))
def test_raw_text_form_round_trips_every_byte_string(data: bytes) -> None:
    text = escape_raw(data)
    assert unescape_raw(text) == data
    assert text.isascii()
    assert all(0x20 <= ord(ch) <= 0x7E for ch in text)


def test_raw_text_form_examples() -> None:
    assert escape_raw(b"]d2A\x1dB\\C\r\n\xe8") == "]d2A\\x1dB\\\\C\\x0d\\x0a\\xe8"
    assert escape_raw(b" ~") == " ~"


@pytest.mark.parametrize(
    "text", ["\\x41", "\\X1d", "\\x1D", "\\", "a\\b", "\x1d", "\u836f", "\\x5c", "\\x2"]
)
def test_raw_text_form_rejects_non_canonical_text(text: str) -> None:
    with pytest.raises(ValueError, match=r"raw text form|printable byte"):
        unescape_raw(text)


def test_biip_still_rejects_a_plain_trace_code() -> None:
    # If biip ever starts accepting 8371170… the rule order still protects us; this
    # documents the reference behaviour the order was designed against (codes.md §5.4).
    with pytest.raises(ParseError):
        GS1Message.parse("83711700173703755001")
