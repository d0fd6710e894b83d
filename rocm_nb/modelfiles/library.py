"""The model library: every GGUF file on this machine, described from its header.

:func:`models` looks in three places, in this order, and walks each one
recursively for ``*.gguf`` files:

1. the rocm_nb models cache (``rocm-nb pull``; catalogue models are named
   by their catalogue name),
2. the Hugging Face hub cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``, as ``huggingface_hub`` decides; files of a
   repository's ``main`` revision are named ``hf:owner/repo/file.gguf``),
3. the directories in ``ROCM_NB_MODEL_DIR`` (separated by ``:``), or the
   ``dirs`` passed in; their files are named by path.

Every entry's name loads it: ``LocalModel(entry.name)`` or ``%rocm_load
NAME``. A file reached twice (a snapshot symlink and its blob, an overlapping
directory) is listed once, under the first name found. Shards of a split
model (``name-00001-of-00003.gguf``) are one entry, named after the first
shard, with their sizes and parameters summed; a missing shard is an error.

Metadata comes from the GGUF header only (:func:`~rocm_nb.modelfiles.catalog.read_info`
walks the header through a memory map and never touches tensor data), cached
per path, size and modification time. A file that cannot be read is an entry
with its ``error``, never an exception for the whole scan.

The "fits" column asks :func:`rocm_nb.modelfiles.fit.estimate` what a load with every
layer on the GPU and a context of min(trained, 8192) tokens on one slot needs
(what ``LocalModel(name)`` asks for by default). On a GPU machine that is
compared with the free VRAM of the GPU llama-server may use that has the
most, less the 1 GiB margin rocm_nb keeps free when it plans a load
(:data:`rocm_nb.modelfiles.fit.GPU_MARGIN`): "yes" means the whole model goes to the
GPU. On a machine without a GPU, llama-server runs on the CPU, the column is
titled "fits in RAM? (CPU)", and the whole estimate is compared with the RAM
available now (``psutil.virtual_memory().available``). When the free VRAM is
unknown the column shows "?".

Example:
    >>> lib = models(environ={"ROCM_NB_CACHE": "/nonexistent", "HF_HUB_CACHE": "/nonexistent"})
    >>> len(lib)
    0
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, overload

import psutil

from rocm_nb._escape import html_text, printable, text_table
from rocm_nb._extras import needs_extra
from rocm_nb._units import human_bytes, human_count
from rocm_nb.errors import RocmNbError
from rocm_nb.hardware import Hardware, detect
from rocm_nb.hardware._unified import gpu_budget
from rocm_nb.modelfiles.catalog import CATALOGUE, DEFAULT_MODEL, ModelInfo, models_dir, read_info
from rocm_nb.modelfiles.fit import GPU_MARGIN, estimate

__all__ = ["LibraryEntry", "ModelLibrary", "hf_hub_cache", "model_names", "models"]

Source = Literal["rocm_nb", "huggingface", "directory"]
FIT_CTX = 8192
"""The context the "fits" column assumes (or the trained context, when smaller): ``LocalModel``'s default."""
_SHARD = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class LibraryEntry:
    """One model file (or one set of shards) found on this machine.

    ``name`` is what loads it (a catalogue name, ``hf:owner/repo/file.gguf``
    or a path); ``info`` is its GGUF metadata, ``None`` when ``error`` says
    why it could not be read. ``memory`` is the estimated bytes a default
    load needs where the library compares it (VRAM on a GPU machine, all of
    it on the CPU), and ``fits`` the answer (``None``: unknown).

    Example:
        >>> entry = models()[0]  # doctest: +SKIP
        >>> entry.name, entry.info.architecture, entry.size  # doctest: +SKIP
        ('smollm2-135m', 'llama', 98362432)
    """

    name: str
    path: Path
    source: Source
    size: int
    shards: int
    info: ModelInfo | None
    error: str | None
    memory: int | None = None
    fits: bool | None = None


@dataclass(frozen=True)
class _Budget:
    """What the "fits" column compares with: its title, the bytes free (``None``: unknown) and how it was chosen."""

    title: str
    free: int | None
    note: str
    gpu: bool


@dataclass(frozen=True)
class _Found:
    """A file (or the shards of one model) before its header is read."""

    name: str
    files: tuple[Path, ...]
    source: Source
    missing: tuple[int, ...] = ()
    count: int = 1


class ModelLibrary(Sequence[LibraryEntry]):
    """What :func:`models` found: a sequence of entries that renders as a table.

    ``str()`` (and the REPL) give a text table, a notebook shows an HTML
    table; ``notes`` say what was scanned and what the "fits" column
    (titled ``fits_title``) compares against. File names and what the files
    say are escaped in both (:mod:`rocm_nb._escape`): HTML as text, and
    control characters as escapes, so a name can neither run a script in the
    notebook nor drive the terminal or split a row.

    Example:
        >>> lib = ModelLibrary([], notes=["nothing here"])
        >>> len(lib), str(lib).splitlines()[-1]
        (0, 'nothing here')
    """

    def __init__(self, entries: Iterable[LibraryEntry], *, notes: Iterable[str] = (),
                 fits_title: str = "fits in VRAM?") -> None:
        self.entries = tuple(entries)
        self.notes = tuple(notes)
        self.headers = ("name", "architecture", "parameters", "quantisation", "size", "trained ctx",
                        "chat template", fits_title)

    @overload
    def __getitem__(self, index: int) -> LibraryEntry: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[LibraryEntry, ...]: ...

    def __getitem__(self, index: int | slice) -> LibraryEntry | tuple[LibraryEntry, ...]:
        return self.entries[index]

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[LibraryEntry]:
        return iter(self.entries)

    def _rows(self) -> list[tuple[str, list[str] | str]]:
        """(name, cells) for a readable entry, (name, error) for one that is not."""
        rows: list[tuple[str, list[str] | str]] = []
        for entry in self.entries:
            info = entry.info
            if info is None:
                rows.append((entry.name, f"✗ {entry.error}"))
                continue
            rows.append((entry.name, [
                info.architecture,
                human_count(info.parameters) if info.parameters else "?",
                info.quantization,
                human_bytes(entry.size) + (f" ({entry.shards} shards)" if entry.shards > 1 else ""),
                str(info.context_length or "?"),
                "yes" if info.chat_template else "no",
                "?" if entry.fits is None or entry.memory is None
                else f"{'yes' if entry.fits else 'no'} ({human_bytes(entry.memory)})",
            ]))
        return rows

    def __str__(self) -> str:
        rows = [[name, *body] if isinstance(body, list) else [name, body] for name, body in self._rows()]
        lines = text_table(self.headers, rows) if rows else []  # every cell printable: no escape reaches a terminal
        return "\n".join([*lines, *([""] if lines and self.notes else []), *(printable(n) for n in self.notes)])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html_text(h)}</th>" for h in self.headers)
        body = ""
        for entry, (name, cells) in zip(self.entries, self._rows(), strict=True):
            first = f'<td title="{html_text(entry.path)}"><code>{html_text(name)}</code></td>'
            if isinstance(cells, list):
                rest = "".join(f"<td>{html_text(c)}</td>" for c in cells)
            else:
                rest = f'<td colspan="{len(self.headers) - 1}">{html_text(cells)}</td>'
            body += f"<tr>{first}{rest}</tr>"
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>" if self.entries else ""
        notes = "".join(f"<li>{html_text(n)}</li>" for n in self.notes)
        return f"{table}<ul>{notes}</ul>"


def hf_hub_cache(environ: Mapping[str, str] | None = None) -> Path:
    """The Hugging Face hub cache directory, decided as ``huggingface_hub`` decides it.

    ``HF_HUB_CACHE`` (or the older ``HUGGINGFACE_HUB_CACHE``), else
    ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
    ``~/.cache/huggingface/hub``.

    Example:
        >>> hf_hub_cache({"HF_HOME": "/data/hf"})
        PosixPath('/data/hf/hub')
    """
    env = os.environ if environ is None else environ
    chosen = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if not chosen:
        home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
        chosen = os.path.join(home, "hub")
    return Path(chosen).expanduser()


def _user_dirs(dirs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None,
               env: Mapping[str, str]) -> list[Path]:
    if dirs is None:
        return [Path(d).expanduser() for d in env.get("ROCM_NB_MODEL_DIR", "").split(os.pathsep) if d]
    if isinstance(dirs, str | os.PathLike):
        return [Path(dirs).expanduser()]
    return [Path(d).expanduser() for d in dirs]


def _walk(root: Path) -> list[Path]:
    """Every ``*.gguf`` under ``root`` (directory symlinks are not followed), sorted."""
    found = [
        Path(top) / name
        for top, _, files in os.walk(root)
        for name in files
        if name.lower().endswith(".gguf")
    ]
    return sorted(found)


def _display_path(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(Path("~") / path.relative_to(Path.home()))
    return str(path)


def _hf_files(hub: Path, notes: list[str]) -> list[tuple[str, Path]]:
    try:
        with needs_extra("hub"):
            from huggingface_hub import scan_cache_dir
    except ModuleNotFoundError as exc:
        notes.append(f"the Hugging Face cache {hub} was not scanned: {exc}")
        return []
    try:
        cache = scan_cache_dir(hub)
    except (OSError, ValueError) as exc:
        notes.append(f"could not scan the Hugging Face cache {hub}: {exc}")
        return []
    notes.extend(f"Hugging Face cache: {warning}" for warning in cache.warnings)
    found = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        for revision in sorted(repo.revisions, key=lambda r: ("main" not in r.refs, r.commit_hash)):
            for file in sorted(revision.files, key=lambda f: f.file_path):
                if not file.file_name.lower().endswith(".gguf"):
                    continue
                relative = file.file_path.relative_to(revision.snapshot_path).as_posix()
                loadable = repo.repo_type == "model" and "main" in revision.refs
                found.append((f"hf:{repo.repo_id}/{relative}" if loadable else _display_path(file.file_path),
                              file.file_path))
    return found


def _discover(dirs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None,
              env: Mapping[str, str], notes: list[str]) -> list[_Found]:
    """Find the files, name them, drop repeats, group shards; no header is read."""
    named: list[tuple[str, Path, Source]] = []
    cache = models_dir(env)
    by_filename = {entry.filename: name for name, entry in CATALOGUE.items()}
    named += [(by_filename.get(p.name) or _display_path(p), p, "rocm_nb") for p in _walk(cache)]
    hub = hf_hub_cache(env)
    if hub.is_dir():
        named += [(name, path, "huggingface") for name, path in _hf_files(hub, notes)]
    for directory in _user_dirs(dirs, env):
        if not directory.is_dir():
            notes.append(f"{directory} is not a directory; nothing was scanned there")
        named += [(_display_path(p), p, "directory") for p in _walk(directory)]

    seen: set[Path] = set()
    singles: list[_Found] = []
    shards: dict[tuple[Path, str, int], list[tuple[int, str, Path, Source]]] = {}
    for name, path, source in named:
        try:
            real = path.resolve()
        except (OSError, RuntimeError):  # a symlink loop: read_info will say what is wrong with it
            real = path
        if real in seen:
            continue
        seen.add(real)
        match = _SHARD.match(path.name)
        if match is None:
            singles.append(_Found(name, (path,), source))
            continue
        key = (path.parent, match["stem"], int(match["count"]))
        shards.setdefault(key, []).append((int(match["index"]), name, path, source))
    for (_, _, count), parts in shards.items():
        parts.sort()
        present = {index for index, *_ in parts}
        _, name, _, source = parts[0]
        singles.append(_Found(
            name, tuple(path for *_, path, _ in parts), source,
            missing=tuple(sorted(set(range(1, count + 1)) - present)), count=count,
        ))
    order = {"rocm_nb": 0, "huggingface": 1, "directory": 2}
    return sorted(singles, key=lambda f: (order[f.source], f.name.lower()))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _budget(hardware: Hardware) -> _Budget:
    """The free memory the "fits" column compares with, and a note saying which and why."""
    if hardware.backend == "cpu" or not hardware.gpus:
        available = psutil.virtual_memory().available
        return _Budget("fits in RAM? (CPU)", available, (
            f"no GPU: llama-server runs on the CPU, so \"fits\" compares each model's estimated memory "
            f"(ctx min(trained, {FIT_CTX})) with the {human_bytes(available)} of RAM available now"
        ), gpu=False)
    unified = gpu_budget(hardware, hardware.backend, "auto", free_ram=psutil.virtual_memory().available)
    if unified.unified and unified.free is not None:
        carve = unified.dedicated or 0
        return _Budget("fits in carve-out + GTT?", max(0, unified.free - GPU_MARGIN), (
            f"\"fits\": every layer and the KV cache of min(trained, {FIT_CTX}) tokens on the integrated GPU: "
            f"{human_bytes(carve)} of free carve-out + {human_bytes(unified.free - carve)} of GTT (system RAM, so "
            f"capped by the RAM available now), less the {human_bytes(GPU_MARGIN)} rocm_nb keeps free"
        ), gpu=True)
    known = [g for g in hardware.visible_gpus if g.vram_free is not None]
    if not known:
        return _Budget("fits in VRAM?", None, "free VRAM unknown (no tool or sysfs file reported it): "
                       "\"fits\" shows ?; rocm-nb doctor says what is missing", gpu=True)
    gpu = max(known, key=lambda g: g.vram_free or 0)
    free = gpu.vram_free or 0
    return _Budget("fits in VRAM?", max(0, free - GPU_MARGIN), (
        f"\"fits\": every layer and the KV cache of min(trained, {FIT_CTX}) tokens on GPU {gpu.index} "
        f"({gpu.name}), whose {human_bytes(free)} of free VRAM is the most, less the "
        f"{human_bytes(GPU_MARGIN)} rocm_nb keeps free"
    ), gpu=True)


def _memory(info: ModelInfo, budget: _Budget) -> tuple[int, bool | None]:
    """Estimated bytes of a default load, where ``budget`` counts them, and whether they fit."""
    ctx = min(info.context_length or FIT_CTX, FIT_CTX)
    needed = estimate(info, ctx_size=ctx, gpu_layers=(info.block_count or 0) + 1 if budget.gpu else 0)
    memory = needed.vram if budget.gpu else needed.total
    return memory, None if budget.free is None else memory <= budget.free


def _describe(found: _Found, budget: _Budget) -> LibraryEntry:
    size = sum(_size(p) for p in found.files)
    if found.missing:
        missing = ", ".join(str(i) for i in found.missing)
        error = (f"shard {missing} of {found.count} missing next to {found.files[0].name}: "
                 "download the missing shards into the same directory")
    else:
        try:
            parts = [read_info(p) for p in found.files]
            info = parts[0]
            if len(parts) > 1:
                info = dataclasses.replace(
                    info,
                    parameters=sum(p.parameters or 0 for p in parts) or None,
                    tensors=tuple(t for p in parts for t in p.tensors),
                )
            memory, fits = _memory(info, budget)
        except (RocmNbError, OSError) as exc:
            error = str(exc)
        except Exception as exc:  # one file never breaks the table: the module docstring's promise
            error = (f"could not be described ({type(exc).__name__}: {exc}); if llama.cpp loads this "
                                 "file, please report it as a rocm_nb bug")
        else:
            return LibraryEntry(found.name, found.files[0], found.source, size, len(found.files), info, None,
                                memory, fits)
    return LibraryEntry(found.name, found.files[0], found.source, size, len(found.files), None, error)


def model_names(dirs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None, *,
                environ: Mapping[str, str] | None = None) -> list[str]:
    """Names :class:`~rocm_nb.LocalModel` accepts: the catalogue and every model file found.

    Cheap enough for tab completion: files are found but no header is read.

    Example:
        >>> model_names(environ={"ROCM_NB_CACHE": "/nonexistent", "HF_HUB_CACHE": "/nonexistent"})
        ['smollm2-135m', 'minilm', 'smolvlm-256m']

    The default model comes first (what a bare ``%rocm_load`` loads), then
    the rest of the catalogue, then the files, each part sorted.
    """
    env = os.environ if environ is None else environ
    found = [f.name for f in _discover(dirs, env, [])]
    return [DEFAULT_MODEL, *sorted(set(CATALOGUE) - {DEFAULT_MODEL}), *sorted(set(found) - set(CATALOGUE))]


def models(dirs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]] | None = None, *,
           environ: Mapping[str, str] | None = None, hardware: Hardware | None = None) -> ModelLibrary:
    """Every GGUF model on this machine, as a table (HTML in a notebook, text in a terminal).

    ``dirs`` replaces ``ROCM_NB_MODEL_DIR`` (one directory or several); the
    rocm_nb and Hugging Face caches are always scanned. ``hardware`` (default:
    :func:`~rocm_nb.hardware.detect`) decides what "fits" compares with. Not to be confused
    with :meth:`rocm_nb.Client.models`, which asks a running server which
    models *it* offers.

    Example:
        >>> import rocm_nb
        >>> rocm_nb.models()  # doctest: +SKIP
        name          architecture  parameters  quantisation  size    trained ctx  chat template
        smollm2-135m  llama         135M        Q4_1          94 MiB  8192         yes
        >>> rocm_nb.models("~/models")[0].info.context_length  # doctest: +SKIP
        32768
    """
    env = os.environ if environ is None else environ
    budget = _budget(detect(environ=env) if hardware is None else hardware)
    notes: list[str] = []
    entries = [_describe(found, budget) for found in _discover(dirs, env, notes)]
    places = [str(models_dir(env)), str(hf_hub_cache(env)), *(str(d) for d in _user_dirs(dirs, env))]
    if entries:
        notes.insert(0, f"{len(entries)} model(s) found in {', '.join(places)}")
    else:
        notes.insert(0, f"no .gguf files in {', '.join(places)}. rocm-nb pull {DEFAULT_MODEL} fetches the "
                        "default model; list your own model folders in ROCM_NB_MODEL_DIR (separated by ':')")
    if entries:
        notes.append(budget.note)
    return ModelLibrary(entries, notes=notes, fits_title=budget.title)
