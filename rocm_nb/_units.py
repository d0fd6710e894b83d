"""Numbers for people: byte sizes and counts, written the same way everywhere, and checked.

Example:
    >>> human_bytes(98_400_000), human_bytes(24 * 2**30), human_count(134_515_008)
    ('94 MiB', '24.0 GiB', '135M')
"""

from __future__ import annotations

import re

__all__ = ["human_bytes", "human_count", "parse_bytes", "positive_int"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, **{f"{p}IB": 1024 ** (i + 1) for i, p in enumerate("KMGT")},
          **{f"{p}B": 1000 ** (i + 1) for i, p in enumerate("KMGT")}}


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


def parse_bytes(name: str, value: object, *, zero: bool = False) -> int:
    """A size in bytes from an ``int`` or a string such as ``"64MiB"``, ``"1.5 GiB"`` or ``"500MB"``.

    IEC units (KiB, MiB, GiB, TiB) are powers of 1024, SI units (KB, MB, GB,
    TB) powers of 1000; a bare number is bytes. Anything else, or a size
    that is not positive (0 is taken with ``zero=True``), is a ``ValueError``
    naming ``name``.

    Example:
        >>> parse_bytes("gpu_memory", "64MiB"), parse_bytes("gpu_memory", "1.5 GiB"), parse_bytes("gpu_memory", 4096)
        (67108864, 1610612736, 4096)
        >>> parse_bytes("gpu_memory", "64M")
        Traceback (most recent call last):
        ...
        ValueError: gpu_memory='64M' is not a size: use bytes (an int) or a number with a unit, such as '64MiB', \
'8 GiB' or '500MB'
    """
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        match = _SIZE.match(value) if isinstance(value, str) else None
        if match is None:
            raise ValueError(f"{name}={value!r} is not a size: use bytes (an int) or a number with a unit, such as "
                             "'64MiB', '8 GiB' or '500MB'")
        size = int(float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()])
    if size < 0 or (size == 0 and not zero):
        raise ValueError(f"{name} must be a positive size{' or 0' if zero else ''}, got {value!r}")
    return size
