"""age public keys as a setting (``BACKUPS_ENCRYPT_TO``): parsed and checked without pyrage.

A leaf module, below the settings that use it: a typo in a key fails at start-up even where
the age library is missing, and the settings never import the encryption code.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tablettracker_backups.errors import ConfigError

_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
#: ``age1`` + 52 data characters (32 bytes) + 6 checksum characters.
_RECIPIENT_DATA_LENGTH = 58


def _bech32_valid(text: str) -> bool:
    hrp, _, data = text.rpartition("1")
    if hrp != "age" or len(data) != _RECIPIENT_DATA_LENGTH:
        return False
    values = [_BECH32.find(c) for c in data]
    if -1 in values:
        return False
    check = 1
    for value in [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for bit, generator in enumerate(_BECH32_GENERATOR):
            if (top >> bit) & 1:
                check ^= generator
    return check == 1


def shown_key(text: str) -> str:
    """A recipient shortened for a message (never a whole secret, should one be pasted)."""
    return f"{text[:10]}...{text[-4:]}" if len(text) > 16 else repr(text)


def parse_recipients(value: object) -> tuple[str, ...]:
    """Recipients from ``BACKUPS_ENCRYPT_TO``: ``age1...`` keys separated by whitespace or
    commas (or a TOML list of them), in order, without repeats; ``()`` when unset.

    Checked without pyrage (bech32 checksum included), so a typo fails at start-up even where
    the library is missing. Raises :class:`ConfigError` naming the bad entry.
    """
    if value is None:
        return ()
    items: Iterable[object] = value if isinstance(value, list | tuple) else [value]
    found: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError("BACKUPS_ENCRYPT_TO must be age1... public keys")
        for text in re.split(r"[\s,]+", item.strip()):
            if not text:
                continue
            if text.upper().startswith("AGE-SECRET-KEY-"):
                raise ConfigError(
                    "BACKUPS_ENCRYPT_TO holds a private identity (AGE-SECRET-KEY-...): keep it "
                    "OFF the server and put its public key (age1..., printed by keygen) here"
                )
            if not text.startswith("age1"):
                raise ConfigError(
                    f"BACKUPS_ENCRYPT_TO: {shown_key(text)} is not an age X25519 public key "
                    "(age1...)"
                )
            if not _bech32_valid(text):
                raise ConfigError(
                    f"BACKUPS_ENCRYPT_TO: {shown_key(text)} is not a valid age public key "
                    "(wrong length or checksum: a typo?)"
                )
            if text not in found:
                found.append(text)
    return tuple(found)
