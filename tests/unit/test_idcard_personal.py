"""ID-number checks, masking and sealing of personal identity."""

from __future__ import annotations

import pickle
from datetime import date

import pytest

from scanfleet.daemon.core.personal import (
    PersonalData,
    SealError,
    check_character,
    generate_keypair,
    id_number_problems,
    mask_id_number,
    mask_name,
    open_personal,
    open_sealed,
    public_key_of,
    seal,
    seal_personal,
)

TODAY = date(2026, 11, 25)


@pytest.mark.parametrize(
    ("number", "card_type"),
    [
        ("11010519491231002X", "mainland"),
        ("360426199101010071", "mainland"),
        ("810000199408230021", "hk_macau_taiwan"),
        ("830000199201300022", "hk_macau_taiwan"),
        ("81000019980902013X", "hk_macau_taiwan"),
        ("932682198501010017", "foreign_2023"),
    ],
)
def test_valid_numbers_pass_including_permits_stdnum_rejects(number: str, card_type: str) -> None:
    assert id_number_problems(number, card_type=card_type, today=TODAY) == []


def test_check_character_follows_mod_11_2() -> None:
    assert check_character("11010519491231002") == "X"
    assert check_character("36042619910101007") == "1"


@pytest.mark.parametrize(
    ("number", "problem"),
    [
        ("110105194912310021", "check character"),
        ("11010519491331002X", "not a calendar date"),
        ("1101051949123100", "17 digits"),
        ("11010520991231002X", "future"),
    ],
)
def test_bad_numbers_are_refused_with_a_reason_that_hides_the_number(
    number: str, problem: str
) -> None:
    if problem == "future":
        number = number[:17] + check_character(number[:17])
    problems = id_number_problems(number, today=TODAY)
    assert any(problem in p for p in problems)
    assert not any(number in p for p in problems)


def test_birth_field_must_agree_with_the_number() -> None:
    problems = id_number_problems("11010519491231002X", birth="19500101", today=TODAY)
    assert problems == ["birth date on the card does not match the ID number"]


def test_permit_number_must_carry_its_area_prefix() -> None:
    assert id_number_problems("11010519491231002X", card_type="hk_macau_taiwan", today=TODAY)
    assert id_number_problems("11010519491231002X", card_type="foreign_2023", today=TODAY)


def test_2017_foreigner_number_is_checked_for_shape_only() -> None:
    assert id_number_problems("USA110085010100", card_type="foreign_2017") == []
    assert id_number_problems("USA1100850101", card_type="foreign_2017")


def test_masks_match_the_documented_forms() -> None:
    assert mask_id_number("11010519491231002X") == "110105********002X"
    assert mask_id_number("USA110085010100") == "USA*********100"
    assert mask_name("张三丰") == "张**"
    assert mask_name("") == ""


def test_personal_data_never_shows_plain_fields() -> None:
    data = PersonalData({"id_number": "11010519491231002X", "name": "张三丰", "address": "某地"})
    for text in (repr(data), str(data), f"{data}", repr([data]), repr({"x": data})):
        assert "11010519491231002X" not in text
        assert "三丰" not in text
        assert "某地" not in text
    with pytest.raises(TypeError):
        pickle.dumps(data)


def test_sealed_identity_opens_only_with_the_backend_private_key() -> None:
    private, public = generate_keypair()
    other_private, _ = generate_keypair()
    assert public_key_of(private) == public
    data = PersonalData({"id_number": "11010519491231002X", "name": "张三丰"})
    sealed = seal_personal(data, public)
    assert "11010519491231002X" not in sealed
    assert open_personal(sealed, private) == data.plain()
    with pytest.raises(SealError):
        open_personal(sealed, other_private)


def test_two_seals_of_the_same_identity_differ() -> None:
    _, public = generate_keypair()
    assert seal(b"same", public) != seal(b"same", public)


def test_an_altered_box_does_not_open() -> None:
    private, public = generate_keypair()
    sealed = bytearray(seal(b"identity", public).encode())
    sealed[-3] = ord("A") if sealed[-3] != ord("A") else ord("B")
    with pytest.raises(SealError):
        open_sealed(sealed.decode(), private)


def test_malformed_keys_are_refused() -> None:
    with pytest.raises(SealError):
        seal(b"x", "not base64!")
    with pytest.raises(SealError):
        seal(b"x", "AAAA")
