"""How many SMS segments a text takes (3GPP TS 23.038, formerly GSM 03.38).

A text written only in the GSM 7-bit default alphabet travels as septets:
160 in a single message, 153 in each part of a concatenated one (the user
data header takes the rest). The characters of the extension table cost two
septets (an escape, then the character), and a part never ends between the
two. Any other character makes the whole text UCS-2: 70 UTF-16 code units in
a single message, 67 per part, and a part never splits a surrogate pair.
"""
from __future__ import annotations

GSM7 = "gsm7"
UCS2 = "ucs2"

# The default alphabet in code order; 0x1B, the escape to the extension table, is left out.
BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
EXTENSION = frozenset("\f^{}\\[~]|€")

LIMITS = {GSM7: (160, 153), UCS2: (70, 67)}  # (one message, each part of a longer one)


def segments(text: str) -> tuple[str, int, int]:
    """``(encoding, units, segments)`` for ``text``: the encoding a phone
    network would use, the septets (GSM-7) or UTF-16 code units (UCS-2) it
    takes, and the number of SMS it is sent as (at least one)."""
    if all(c in BASIC or c in EXTENSION for c in text):
        encoding, costs = GSM7, [2 if c in EXTENSION else 1 for c in text]
    else:
        encoding, costs = UCS2, [2 if ord(c) > 0xFFFF else 1 for c in text]
    units = sum(costs)
    single, part = LIMITS[encoding]
    if units <= single:
        return encoding, units, 1
    count, room = 1, part
    for cost in costs:  # an escape pair or a surrogate pair stays in one part
        if cost > room:
            count, room = count + 1, part
        room -= cost
    return encoding, units, count
