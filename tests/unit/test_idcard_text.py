"""The 256-byte text block of every card type, decoded from bytes laid out by hand."""

from __future__ import annotations

import pytest

from scanfleet.drivers.idcard.text import (
    NATION_TEXT,
    SEX,
    CardType,
    card_type_of,
    decode_text,
    encode_text,
)
from scanfleet.drivers.sim.idcard import SAMPLE_CARDS


def _slot(text: str, size: int) -> bytes:
    raw = text.encode("utf-16-le")
    return raw + " ".encode("utf-16-le") * ((size - len(raw)) // 2)


def test_mainland_block_laid_out_per_the_field_table_decodes() -> None:
    block = (
        _slot("张三丰", 30)
        + _slot("1", 2)
        + _slot("03", 4)
        + _slot("19491231", 16)
        + _slot("北京市朝阳区", 70)
        + _slot("11010519491231002X", 36)
        + _slot("北京市公安局", 30)
        + _slot("20100101", 16)
        + _slot("长期", 16)
        + _slot("", 36)
    )
    assert len(block) == 256
    card = decode_text(block)
    fields = card.personal.plain()
    assert card.card_type is CardType.MAINLAND
    assert fields["name"] == "张三丰"
    assert fields["sex_text"] == "男"
    assert fields["nation_text"] == "回"
    assert fields["birth"] == "19491231"
    assert fields["address"] == "北京市朝阳区"
    assert fields["id_number"] == "11010519491231002X"
    assert fields["authority"] == "北京市公安局"
    assert fields["valid_to"] == "长期"
    assert fields["no_expiry"] is True


@pytest.mark.parametrize(
    ("marker", "card_type"),
    [
        ("J", CardType.HK_MACAU_TAIWAN),
        ("I", CardType.FOREIGN_2017),
        ("Y", CardType.FOREIGN_2023),
        (" ", CardType.MAINLAND),
    ],
)
def test_type_marker_at_byte_248_selects_the_layout(marker: str, card_type: CardType) -> None:
    block = bytearray(_slot("", 256))
    block[248:250] = marker.encode("utf-16-le")
    assert card_type_of(bytes(block)) is card_type


def test_foreign_2017_card_fields_come_from_their_own_offsets() -> None:
    block = bytearray(_slot("", 256))
    block[0:120] = _slot("SMITH, JOHN", 120)
    block[120:122] = _slot("1", 2)
    block[122:152] = _slot("USA110085010100", 30)
    block[152:158] = _slot("USA", 6)
    block[158:188] = _slot("史密斯", 30)
    block[220:236] = _slot("19850101", 16)
    block[248:250] = "I".encode("utf-16-le")
    fields = decode_text(bytes(block)).personal.plain()
    assert fields["name_en"] == "SMITH, JOHN"
    assert fields["id_number"] == "USA110085010100"
    assert fields["nationality"] == "USA"
    assert fields["name"] == "史密斯"
    assert fields["birth"] == "19850101"
    assert "nation" not in fields


def test_foreign_2023_english_name_continues_past_the_id_number() -> None:
    long_name = "MUELLER-LUEDENSCHEIDT, ANNA-KATHARINA MARIA"  # 43 chars: 35 + 8
    block = encode_text(
        CardType.FOREIGN_2023, {"name_en": long_name, "id_number": "932682198501010017"}
    )
    assert block[220:236].decode("utf-16-le").startswith(long_name[35:])
    fields = decode_text(block).personal.plain()
    assert fields["name_en"] == long_name
    assert fields["id_number"] == "932682198501010017"


def test_hk_macau_taiwan_permit_carries_pass_number_and_issue_count() -> None:
    fields = decode_text(SAMPLE_CARDS["hk_macau_taiwan"].text()).personal.plain()
    assert fields["pass_number"] == "H01234567"  # noqa: S105 - a permit number, not a password
    assert fields["issue_count"] == "01"
    assert fields["id_number"].startswith("81")


@pytest.mark.parametrize("name", sorted(SAMPLE_CARDS))
def test_every_sample_card_round_trips_through_the_text_block(name: str) -> None:
    sample = SAMPLE_CARDS[name]
    fields = decode_text(sample.text()).personal.plain()
    for key, value in sample.fields.items():
        assert fields[key] == value


def test_decoded_card_repr_shows_only_masked_identity() -> None:
    card = decode_text(SAMPLE_CARDS["mainland"].text())
    shown = repr(card) + str(card.personal)
    assert "11010519491231002X" not in shown
    assert "张三丰" not in shown
    assert "110105********002X" in shown


def test_odd_bytes_decode_without_raising() -> None:
    block = bytes([0x00, 0xD8]) * 128  # lone surrogates everywhere
    assert decode_text(block).card_type is CardType.MAINLAND


def test_code_tables_cover_the_reference_lists() -> None:
    assert SEX == {"0": "未知", "1": "男", "2": "女", "9": "未说明"}
    assert len(NATION_TEXT) == 58
    assert NATION_TEXT["01"] == "汉"
    assert NATION_TEXT["29"] == "柯尔克孜"
    assert NATION_TEXT["98"] == "外国血统中国籍人士"


def test_a_field_too_long_for_its_slot_is_refused_when_encoding() -> None:
    with pytest.raises(ValueError, match="name"):
        encode_text(CardType.MAINLAND, {"name": "名" * 16})
