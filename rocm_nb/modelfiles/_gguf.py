"""The GGUF header walker: metadata key/values and tensor descriptors, read through a memory map.

It uses the ``gguf`` package's enums and block sizes but not ``gguf.GGUFReader``,
which decodes every tokenizer string (about 2 s for the default model, where
this walk takes about 10 ms: arrays are skipped, not decoded). It checks that
every tensor's data lies inside the file, so a truncated download is caught
before any server starts. Each tensor's name, shape, ggml type and size in
bytes is kept: the memory estimator (:mod:`rocm_nb.modelfiles.fit`) splits the weights
between GPU and host from them.

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

__all__ = ["Header", "TensorInfo", "parse_header"]


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


class Header:
    """A cursor over a memory-mapped GGUF header.

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

    def unpack(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.data, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        length = self.unpack("<Q")
        if self.pos + length > len(self.data):
            raise struct.error("string runs past the end of the file")
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return bytes(raw).decode("utf-8", "replace")

    def value(self, kind: int) -> Any:
        """Read one value; arrays are skipped (``None``): no metadata we use is an array."""
        if kind == self._STRING:
            return self.string()
        if kind == self._ARRAY:
            self.skip_array()
            return None
        if kind not in self._SCALARS:
            raise ValueError(f"unknown GGUF value type {kind}")
        return self.unpack(self._SCALARS[kind])

    def skip_array(self) -> None:
        item_kind, count = self.unpack("<I"), self.unpack("<Q")
        if item_kind in self._SCALARS:
            self.pos += count * struct.calcsize(self._SCALARS[item_kind])
        elif item_kind == self._STRING:
            unpack_from, data, pos = struct.unpack_from, self.data, self.pos
            for _ in range(count):  # the tokenizer's vocabulary: tens of thousands of strings
                pos += 8 + unpack_from("<Q", data, pos)[0]
            self.pos = pos
        else:
            for _ in range(count):
                self.value(item_kind)
        if self.pos > len(self.data):
            raise struct.error("array runs past the end of the file")


def parse_header(path: Path) -> tuple[dict[str, Any], tuple[TensorInfo, ...], int]:
    """Return (metadata without arrays, tensor descriptors, bytes the file needs).

    Raises :class:`~rocm_nb.errors.InvalidModel` for an unreadable version, an
    unknown tensor type or a truncated file; a garbled header raises what
    :mod:`struct` or the ``gguf`` enums raise, for the caller to report.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile(suffix=".gguf") as file:
        ...     _ = file.write(b"GGUF" + struct.pack("<IQQ", 3, 0, 0) + bytes(8))
        ...     file.flush()
        ...     parse_header(Path(file.name))
        ({}, (), 32)
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
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = header.string()
            meta[key] = header.value(header.unpack("<I"))
        tensors = []
        data_end = 0
        for _ in range(n_tensors):
            name = header.string()
            dims = tuple(header.unpack("<Q") for _ in range(header.unpack("<I")))
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
        alignment = int(meta.get("general.alignment") or 32)
        data_start = -(-header.pos // alignment) * alignment
    needed = data_start + data_end
    if needed > size:
        raise InvalidModel(
            f"{path} is truncated: its tensors need {needed:,} bytes but the file has {size:,}. "
            "The download or copy was probably cut short: fetch the file again "
            "(for catalogue models: rocm-nb pull NAME)."
        )
    return meta, tuple(tensors), needed
