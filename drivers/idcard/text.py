"""The 256-byte text block (UCS-2 little-endian) of an ID card, and the card read record.

The UCS-2 character at bytes 248-249 tells the card type: ``J`` HK/Macau/Taiwan
residence permit, ``I`` 2017 foreigner permanent-residence card, ``Y`` 2023 foreigner
card, anything else a mainland resident card. Fields are space-padded on the card.

Every decoded field is personal information: it is held in a
:class:`~scanfleet.daemon.core.personal.PersonalData`, whose repr is masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from scanfleet.drivers.base import Read

if TYPE_CHECKING:
    from scanfleet.daemon.core.personal import PersonalData

TEXT_LEN = 256
NO_EXPIRY = "长期"


class CardType(StrEnum):
    """Which layout the text block has."""

    MAINLAND = "mainland"
    HK_MACAU_TAIWAN = "hk_macau_taiwan"
    """'J': 港澳台居民居住证."""
    FOREIGN_2017 = "foreign_2017"
    """'I': 外国人永久居留身份证, 2017 version."""
    FOREIGN_2023 = "foreign_2023"
    """'Y': 外国人永久居留身份证, 2023 version."""


_MARKERS = {"J": CardType.HK_MACAU_TAIWAN, "I": CardType.FOREIGN_2017, "Y": CardType.FOREIGN_2023}
MARKER_OF = {v: k for k, v in _MARKERS.items()}

_MAINLAND = (
    ("name", 0, 30),
    ("sex", 30, 2),
    ("nation", 32, 4),
    ("birth", 36, 16),
    ("address", 52, 70),
    ("id_number", 122, 36),
    ("authority", 158, 30),
    ("valid_from", 188, 16),
    ("valid_to", 204, 16),
)
LAYOUTS: dict[CardType, tuple[tuple[str, int, int], ...]] = {
    CardType.MAINLAND: _MAINLAND,
    CardType.HK_MACAU_TAIWAN: (*_MAINLAND, ("pass_number", 220, 18), ("issue_count", 238, 4)),
    CardType.FOREIGN_2017: (
        ("name_en", 0, 120),
        ("sex", 120, 2),
        ("id_number", 122, 30),
        ("nationality", 152, 6),
        ("name", 158, 30),
        ("valid_from", 188, 16),
        ("valid_to", 204, 16),
        ("birth", 220, 16),
        ("card_version", 236, 4),
        ("authority_code", 240, 8),
    ),
    CardType.FOREIGN_2023: (
        ("name", 0, 30),
        ("sex", 30, 2),
        ("renewal_count", 32, 4),
        ("birth", 36, 16),
        ("name_en", 52, 70),
        ("id_number", 122, 36),
        ("valid_from", 188, 16),
        ("valid_to", 204, 16),
        ("name_en_2", 220, 22),
        ("nationality", 242, 6),
        ("previous_number_ref", 250, 6),
    ),
}
"""(field, byte offset, byte length) per card type; ``name_en_2`` continues ``name_en``."""

SEX = {"0": "未知", "1": "男", "2": "女", "9": "未说明"}
"""GB/T 2261.1 sex codes."""

_NATION_NAMES = (
    "汉 蒙古 回 藏 维吾尔 苗 彝 壮 布依 朝鲜 满 侗 瑶 白 土家 哈尼 哈萨克 傣 黎 傈僳 "
    "佤 畲 高山 拉祜 水 东乡 纳西 景颇 柯尔克孜 土 达斡尔 仫佬 羌 布朗 撒拉 毛南 "
    "仡佬 锡伯 阿昌 普米 塔吉克 怒 乌孜别克 俄罗斯 鄂温克 德昂 保安 裕固 京 塔塔尔 "
    "独龙 鄂伦春 赫哲 门巴 珞巴 基诺"
)
NATION = dict(enumerate(_NATION_NAMES.split(), start=1))
NATION_TEXT: dict[str, str] = {f"{k:02d}": v for k, v in NATION.items()}
"""GB 3304 nation codes (two digits) → name."""
NATION_TEXT.update({"97": "其他", "98": "外国血统中国籍人士"})


@dataclass(frozen=True)
class CardText:
    """A decoded text block: card type plus the personal fields (masked repr)."""

    card_type: CardType
    personal: PersonalData

    def __repr__(self) -> str:
        return f"CardText({self.card_type}, {self.personal!r})"


def card_type_of(block: bytes) -> CardType:
    """The card type the marker at bytes 248-249 names."""
    marker = block[248:250].decode("utf-16-le", errors="replace")
    return _MARKERS.get(marker, CardType.MAINLAND)


def decode_text(block: bytes) -> CardText:
    """Decode a 256-byte text block. Never raises on content; odd bytes decode as U+FFFD.

    :raises ValueError: *block* is not 256 bytes.
    """
    if len(block) != TEXT_LEN:
        raise ValueError(f"text block of {len(block)} bytes, expected {TEXT_LEN}")
    card_type = card_type_of(block)
    fields: dict[str, Any] = {"card_type": str(card_type)}
    for name, offset, length in LAYOUTS[card_type]:
        value = block[offset : offset + length].decode("utf-16-le", errors="replace")
        fields[name] = value.strip(" \x00")
    if card_type is CardType.FOREIGN_2023:
        # The English name runs on from bytes 52-121 into 220-241: join, then strip.
        joined = block[52:122] + block[220:242]
        fields["name_en"] = joined.decode("utf-16-le", errors="replace").strip(" \x00")
        del fields["name_en_2"]
    if "sex" in fields:
        fields["sex_text"] = SEX.get(fields["sex"], "")
    if "nation" in fields:
        fields["nation_text"] = NATION_TEXT.get(fields["nation"], "")
    fields["no_expiry"] = fields.get("valid_to") == NO_EXPIRY
    # Imported at the first card, not with the driver module: the registry imports every
    # driver for its config model, and sealing (``cryptography``) is heavy.
    from scanfleet.daemon.core.personal import PersonalData

    return CardText(card_type, PersonalData(fields))


def encode_text(card_type: CardType, fields: dict[str, str]) -> bytes:
    """Build a text block (simulator and tests): each field space-padded into its slot.

    :raises ValueError: a field does not fit its slot.
    """
    block = bytearray(" ".encode("utf-16-le") * (TEXT_LEN // 2))
    values = dict(fields)
    if card_type is CardType.FOREIGN_2023:
        en = values.pop("name_en", "")
        values["name_en"], values["name_en_2"] = en[:35], en[35:]
    for name, offset, length in LAYOUTS[card_type]:
        raw = values.get(name, "").encode("utf-16-le")
        if len(raw) > length:
            raise ValueError(f"{name} does not fit in {length} bytes")
        block[offset : offset + len(raw)] = raw
    if card_type in MARKER_OF:
        block[248:250] = MARKER_OF[card_type].encode("utf-16-le")
    return bytes(block)


@dataclass(frozen=True, kw_only=True)
class CardRead(Read):
    """What an ID-card driver returns from ``read()``: a decoded card, not a scan.

    ``data`` stays empty (the raw reply is personal data); the pipeline tells this
    from a scanner's :class:`Read` by type.
    """

    card: CardText
    photo: bytes = field(default=b"", repr=False)
    """The 1024-byte WLT photo, not decoded."""
    fingerprint: bytes = field(default=b"", repr=False)
