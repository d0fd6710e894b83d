"""The GGUF header walker: metadata key/values and tensor descriptors, read through a memory map.

It uses the ``gguf`` package's enums and block sizes but not ``gguf.GGUFReader``,
which decodes every tokenizer string (about 2 s for the default model, where
this walk takes about 10 ms: arrays are skipped, not decoded). It checks that
every tensor's data lies inside the file, so a truncated download is caught
before any server starts. Each tensor's name, shape, ggml type and size in
bytes is kept: the memory estimator (:mod:`rocm_nb.modelfiles.fit`) splits the weights
between GPU and host from them.

**A hostile file costs milliseconds, not minutes or gigabytes.** Every count
in the header is checked against the bytes that remain before it is walked
(an entry, an array item or a tensor takes at least a few bytes, so a count
of 2^62 in a small or sparse file is refused at once, as llama.cpp's own
reader does), arrays of arrays are walked iteratively and at most
:data:`MAX_NESTING` deep, and one header may make the walk step through at
most :data:`MAX_ITEMS` strings and nested arrays (about two seconds; the
largest real vocabularies have a few hundred thousand). Metadata keys over
64 KiB, more than :data:`MAX_KV` entries, more than :data:`MAX_TENSORS`
tensors or more than 4 dimensions (ggml's limit) are refused; string values
over 1 MiB (an embedded ``tokenizer.json``) are skipped like arrays, not
kept. What the numbers *mean* (a NaN context length, a layer count llama.cpp
cannot load) is checked where :class:`~rocm_nb.modelfiles.catalog.ModelInfo` is built.

Example:
    >>> meta, tensors, needed = parse_header(Path("model.gguf"))  # doctest: +SKIP
    >>> meta["general.architecture"], len(tensors)  # doctest: +SKIP
    ('llama', 272)
    >>> TensorInfo("blk.0.ffn_up.weight", (576, 1536), "Q4_1", 552_960).layer
    0
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from rocm_nb.errors import InvalidModel

__all__ = ["MAX_ITEMS", "MAX_KV", "MAX_NESTING", "MAX_TENSORS", "Header", "TensorInfo", "parse_header"]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the GGUF header describes it.

    ``shape`` is in GGUF order (the fastest-varying dimension first, as
    ggml's ``ne``); ``nbytes`` is what its data takes in the file and in
    memory once loaded.

    Example:
        >>> t = TensorInfo("blk.3.attn_q.weight", (576, 576), "Q4_1", 207_360)
        >>> t.layer, t.elements
        (3, 331776)
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: str
    nbytes: int

    @property
    def elements(self) -> int:
        """How many numbers the tensor holds."""
        count = 1
        for dim in self.shape:
            count *= dim
        return count

    @property
    def layer(self) -> int | None:
        """The repeating layer (``blk.N.``) the tensor belongs to, else ``None``."""
        prefix, _, rest = self.name.partition(".")
        number = rest.partition(".")[0]
        return int(number) if prefix == "blk" and number.isdigit() else None


_MAX_PLAUSIBLE_TYPE = 255
"""GGML tensor type codes are small (under 50 in 2025); a larger one is a corrupt header, not a new type."""

MAX_NESTING = 8
"""Arrays of arrays deeper than this are refused (real files have none; the format allows them)."""

MAX_ITEMS = 2**24
"""The most strings and nested arrays one header's arrays may make the walk step through (16,777,216).

About two seconds of walking; the largest real vocabularies (with their
merges) have well under a million. Arrays of numbers are skipped in one step
and do not count.
"""

MAX_KV = 2**16
"""The most metadata entries one header may declare (real files have a few dozen)."""

MAX_TENSORS = 2**17
"""The most tensors one header may declare (a model with every expert in its own tensor has tens of thousands)."""

_MAX_DIMS = 4
"""ggml's ``GGML_MAX_DIMS``: gguf.cpp refuses a tensor with more."""

_MAX_KEY = 2**16
"""The longest metadata key or tensor name read (ggml names are under 64 bytes)."""

_MAX_KEPT = 2**20
"""String values longer than this (1 MiB: an embedded ``tokenizer.json``) are skipped, not kept."""

_MIN_KV_BYTES = 8 + 4 + 1
"""The fewest bytes one metadata entry takes: an empty key, its type, a one-byte value."""

_MIN_TENSOR_BYTES = 8 + 4 + 4 + 8
"""The fewest bytes one tensor descriptor takes: an empty name, no dimensions, a type, an offset."""


class Header:
    """A cursor over a memory-mapped GGUF header that reads nothing past its end.

    Example:
        >>> data = mmap.mmap(-1, 12)
        >>> _ = data.write(struct.pack("<Q", 4) + b"GGUF")
        >>> Header(data).string()
        'GGUF'
    """

    _SCALARS: ClassVar[dict[int, str]] = {
        0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
    }
    _STRING, _ARRAY = 8, 9

    def __init__(self, data: mmap.mmap) -> None:
        self.data = data
        self.pos = 0
        self.items_left = MAX_ITEMS
        """What is left of :data:`MAX_ITEMS` for this header."""

    @property
    def remaining(self) -> int:
        """The bytes left after the cursor."""
        return len(self.data) - self.pos

    def unpack(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def count(self, what: str, count: int, each: int, most: int) -> int:
        """``count`` if that many ``what`` (at least ``each`` bytes apiece) fit what is left and ``most``.

        Example:
            >>> Header(mmap.mmap(-1, 100)).count("entries", 2**62, 13, 2**16)
            Traceback (most recent call last):
            ...
            ValueError: 4611686018427387904 entries cannot fit in the 100 bytes left (at least 13 bytes each)
        """
        if count * each > self.remaining:
            raise ValueError(f"{count} {what} cannot fit in the {self.remaining} bytes left "
                             f"(at least {each} bytes each)")
        if count > most:
            raise ValueError(f"{count:,} {what} is more than the {most:,} rocm_nb reads")
        return count

    def string(self, *, most: int = _MAX_KEY, keep: bool = True) -> str | None:
        """One string; longer than ``most`` bytes it is refused, or skipped (``None``) where ``keep`` is false."""
        length = self.unpack("<Q")
        if length > self.remaining:
            raise ValueError(f"a string of {length} bytes runs past the end of the file ({self.remaining} bytes left)")
        if length > most:
            if keep:
                raise ValueError(f"a string of {length:,} bytes is longer than the {most:,} rocm_nb reads here")
            self.pos += length
            return None
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return bytes(raw).decode("utf-8", "replace")

    def value(self, kind: int) -> Any:
        """Read one value; arrays and strings over 1 MiB are skipped (``None``): no metadata we use is either."""
        if kind == self._STRING:
            return self.string(most=_MAX_KEPT, keep=False)
        if kind == self._ARRAY:
            self.skip_array()
            return None
        if kind not in self._SCALARS:
            raise ValueError(f"unknown GGUF value type {kind}")
        return self.unpack(self._SCALARS[kind])

    def _array_head(self) -> list[int]:
        """An array's item type and count, checked against the bytes left and :data:`MAX_ITEMS`."""
        kind, count = self.unpack("<I"), self.unpack("<Q")
        if kind in self._SCALARS:
            return [kind, self.count("array items", count, struct.calcsize(self._SCALARS[kind]), 2**64)]
        if kind not in (self._STRING, self._ARRAY):
            raise ValueError(f"unknown GGUF array item type {kind}")
        self.count("array items", count, 8 if kind == self._STRING else 12, self.items_left)
        self.items_left -= count
        return [kind, count]

    def skip_array(self) -> None:
        """Step over one array value, arrays of arrays included (iteratively, at most :data:`MAX_NESTING` deep)."""
        stack = [self._array_head()]
        while stack:
            kind, left = stack[-1]
            if kind == self._ARRAY and left:
                stack[-1][1] -= 1
                if len(stack) >= MAX_NESTING:
                    raise ValueError(f"arrays nested more than {MAX_NESTING} deep")
                stack.append(self._array_head())
                continue
            if kind == self._STRING:
                unpack_from, data, pos, end = struct.unpack_from, self.data, self.pos, len(self.data)
                for _ in range(left):  # the tokenizer's vocabulary: tens of thousands of strings
                    pos += 8 + unpack_from("<Q", data, pos)[0]
                    if pos > end:
                        raise ValueError("an array of strings runs past the end of the file")
                self.pos = pos
            elif kind in self._SCALARS:
                self.pos += left * struct.calcsize(self._SCALARS[kind])
            stack.pop()


def parse_header(path: Path) -> tuple[dict[str, Any], tuple[TensorInfo, ...], int]:
    """Return (metadata without arrays, tensor descriptors, bytes the file needs).

    Raises :class:`~rocm_nb.errors.InvalidModel` for an unreadable version, an
    unknown tensor type or a truncated file; a garbled or hostile header
    (counts the file cannot hold, arrays nested too deep: see the module
    docstring) raises :class:`ValueError` or :class:`struct.error` naming what
    is wrong, for the caller to report.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile(suffix=".gguf") as file:
        ...     _ = file.write(b"GGUF" + struct.pack("<IQQ", 3, 0, 0) + bytes(8))
        ...     file.flush()
        ...     parse_header(Path(file.name))
        ({}, (), 24)
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    size = path.stat().st_size
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        header = Header(data)
        header.pos = 4
        version = header.unpack("<I")
        if version not in (2, 3):
            raise InvalidModel(f"{path} is GGUF version {version}; rocm_nb reads versions 2 and 3")
        n_tensors, n_kv = header.unpack("<Q"), header.unpack("<Q")
        header.count("metadata entries", n_kv, _MIN_KV_BYTES, MAX_KV)
        header.count("tensors", n_tensors, _MIN_TENSOR_BYTES, MAX_TENSORS)
        meta: dict[str, Any] = {}
        for index in range(n_kv):
            key = header.string()
            try:
                meta[str(key)] = header.value(header.unpack("<I"))
            except (ValueError, struct.error) as exc:
                raise ValueError(f"metadata entry {index} ({key!r}): {exc}") from None
        tensors = []
        data_end = 0
        for _ in range(n_tensors):
            name = str(header.string())
            n_dims = header.unpack("<I")
            if n_dims > _MAX_DIMS:
                raise ValueError(f"tensor {name!r} has {n_dims} dimensions; ggml allows at most {_MAX_DIMS}")
            dims = tuple(header.unpack("<Q") for _ in range(n_dims))
            code = header.unpack("<I")
            try:
                kind = GGMLQuantizationType(code)
                block, type_size = GGML_QUANT_SIZES[kind]
            except (ValueError, KeyError):
                if code > _MAX_PLAUSIBLE_TYPE:
                    raise  # garbage, not a newer format: the caller says the file is corrupt
                raise InvalidModel(
                    f"{path}: tensor {name!r} has an unknown tensor type {code}, newer than the installed gguf "
                    "package knows: upgrade the gguf package (pip install -U gguf) and llama-server "
                    "(rocm-nb server install --rebuild)"
                ) from None
            offset = header.unpack("<Q")
            elements = 1
            for dim in dims:
                elements *= dim
            tensor = TensorInfo(name, dims, kind.name, elements // block * type_size)
            tensors.append(tensor)
            data_end = max(data_end, offset + tensor.nbytes)
        alignment = meta.get("general.alignment", 32)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment is {alignment!r}, not a power of two")
        # the data section is aligned only when there is one (gguf.cpp): a vocabulary-only file ends unpadded
        data_start = -(-header.pos // alignment) * alignment if tensors else header.pos
    needed = data_start + data_end
    if needed > size:
        raise InvalidModel(
            f"{path} is truncated: its tensors need {needed:,} bytes but the file has {size:,}. "
            "The download or copy was probably cut short: fetch the file again "
            "(for catalogue models: rocm-nb pull NAME)."
        )
    return meta, tuple(tensors), needed
