"""Numbers for people: byte sizes and counts, written the same way everywhere, and checked.

Example:
    >>> human_bytes(98_400_000), human_bytes(24 * 2**30), human_count(134_515_008)
    ('94 MiB', '24.0 GiB', '135M')
"""

from __future__ import annotations

import re

__all__ = ["human_bytes", "human_count", "parse_bytes", "positive_int"]


def human_bytes(n: int) -> str:
    """``n`` bytes in GiB (one decimal) from 1 GiB up, else in whole MiB.

    Example:
        >>> human_bytes(512 * 2**20)
        '512 MiB'
    """
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def human_count(n: int) -> str:
    """A count such as a model's parameters: ``1.7B``, ``135M``, ``12K``.

    Example:
        >>> human_count(1_710_000_000)
        '1.7B'
    """
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.0f}{unit}" if n / size >= 10 else f"{n / size:.1f}{unit}"
    return str(n)


def positive_int(name: str, value: object) -> int:
    """``value`` if it is a positive ``int`` (not a ``bool``), else a ``ValueError`` naming ``name``.

    Example:
        >>> positive_int("parallel", 4)
        4
        >>> positive_int("max_tokens", 0)
        Traceback (most recent call last):
        ...
        ValueError: max_tokens must be a positive integer, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE)


def parse_bytes(text: str, name: str) -> int:
    """A size as people write it (``2GiB``, ``512M``, ``1.5 G``, ``0``) in bytes (binary multiples).

    Anything else is a ``ValueError`` naming ``name``.

    Example:
        >>> parse_bytes("2GiB", "budget"), parse_bytes("512 MB", "budget"), parse_bytes("0", "budget")
        (2147483648, 536870912, 0)
        >>> parse_bytes("lots", "ROCM_NB_WARM_BUDGET")
        Traceback (most recent call last):
        ...
        ValueError: ROCM_NB_WARM_BUDGET must be a size such as 2GiB, 512MiB or 0, got 'lots'
    """
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"{name} must be a size such as 2GiB, 512MiB or 0, got {text!r}")
    return int(float(match[1]) * 1024 ** " KMGT".index(match[2].upper() or " "))
