"""The folder of saved prompt caches: what is kept, whether it may be restored, and how much disk it takes.

:mod:`rocm_nb.server.warm` talks to llama-server; this module keeps the
files. A slot file is binary data that llama-server deserialises into its
KV cache, so it is treated like the programs in the binary cache
(:mod:`rocm_nb.binary._trust`):

* the folder (:func:`~rocm_nb._paths.warm_root`) is this user's, mode 0700;
  every file in it is 0600;
* each slot file has a manifest beside it (``<digest>-<slot>.json``) that
  says what configuration made it (:class:`Fingerprint`), how many tokens
  and bytes it holds, and when it was saved and last used;
* a file is restored only if it and its manifest are regular files of this
  user that nobody else can write (every folder up to the root is checked
  too), its size is the manifest's, its header is a llama.cpp sequence
  state with the token count its size allows, and the manifest's
  fingerprint is the starting server's;
* a file llama-server refused or crashed on is moved to ``quarantine/``
  with the reason, never offered again;
* the whole folder keeps to a disk budget (:data:`DEFAULT_BUDGET`, or
  ``ROCM_NB_WARM_BUDGET``): after each save, the least recently used files
  (saved or restored) go first.

Decisions: sizes, not hashes. Nobody but you (and root) can write the
folder, and hashing every file would add to the time ``close()`` may take;
the header check catches what a crash or a full disk leaves. A slot file's
name is new for every save (``<digest>-<slot>-<nonce>.bin``) and its
manifest is replaced atomically after the file is complete, so two kernels
saving the same configuration never mix one's manifest with the other's
file.

Example:
    >>> import tempfile
    >>> store = WarmStore(Path(tempfile.mkdtemp()) / "warm").open()
    >>> store.entries(), store.usage()
    ([], 0)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import stat
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Self

from rocm_nb._paths import private_folder, warm_root, write_private_json
from rocm_nb._units import parse_bytes
from rocm_nb.binary._trust import untrusted

if TYPE_CHECKING:
    from rocm_nb.server import ServerConfig

__all__ = [
    "DEFAULT_BUDGET",
    "SAVE_BUDGET",
    "Entry",
    "Fingerprint",
    "Refusal",
    "WarmStore",
    "budget_from",
    "read_tokens",
    "save_budget",
]

_log = logging.getLogger("rocm_nb")

DEFAULT_BUDGET = 2 * 2**30
"""Bytes the saved prompt caches may take together, unless ``ROCM_NB_WARM_BUDGET`` says otherwise (2 GiB)."""

SAVE_BUDGET = 1.0
"""Seconds ``close()`` (or the end of the interpreter) may spend saving, on top of stopping the server,
unless ``ROCM_NB_WARM_SAVE_S`` says otherwise (:func:`save_budget`).

Jupyter gives a kernel 5 s to exit before it kills it, and a killed kernel
saves nothing; the benchmarks (``benchmarks/README.md``) measure close with
and without a save (a 2,772-token slot of the default model: 30 ms more).
"""

FORMAT = 1
"""The manifest format this module writes and reads (another one is left alone)."""

QUARANTINE = "quarantine"
NOT_REUSABLE = "not-reusable.json"
_STALE_S = 600.0
"""A partial or unlisted slot file this old was left by a save that never finished: it is removed."""

_SEQ_MAGIC = 0x67677371  # llama.h: LLAMA_STATE_SEQ_MAGIC ("ggsq")
_SEQ_VERSION = 3  # llama.h: LLAMA_STATE_SEQ_VERSION at the pinned build
_NULL_TOKEN = -1  # llama.h: LLAMA_TOKEN_NULL, which opens the server's packed token list


def budget_from(environ: Mapping[str, str] | None = None) -> int:
    """The disk budget in bytes: ``ROCM_NB_WARM_BUDGET`` (``2GiB``, ``500MiB``, ``0`` keeps nothing), else 2 GiB.

    Example:
        >>> budget_from({"ROCM_NB_WARM_BUDGET": "512MiB"}) == 512 * 2**20, budget_from({}) == DEFAULT_BUDGET
        (True, True)
    """
    text = (os.environ if environ is None else environ).get("ROCM_NB_WARM_BUDGET", "").strip()
    return parse_bytes("ROCM_NB_WARM_BUDGET", text, zero=True) if text else DEFAULT_BUDGET


def save_budget(environ: Mapping[str, str] | None = None) -> float:
    """Seconds a teardown may spend saving: ``ROCM_NB_WARM_SAVE_S`` (``0`` saves nothing), else :data:`SAVE_BUDGET`.

    A slow disk with large caches may want more; keep it well under the 5 s
    Jupyter waits for a kernel to exit. Anything but seconds ≥ 0 is a
    ``ValueError`` (said when a model is planned, not when it closes).

    Example:
        >>> save_budget({"ROCM_NB_WARM_SAVE_S": "2.5"}), save_budget({})
        (2.5, 1.0)
    """
    text = (os.environ if environ is None else environ).get("ROCM_NB_WARM_SAVE_S", "").strip()
    if not text:
        return SAVE_BUDGET
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0.0 <= seconds < math.inf:
        raise ValueError(f"ROCM_NB_WARM_SAVE_S must be seconds ≥ 0, such as 1 or 2.5, got {text!r}")
    return seconds


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


@dataclass(frozen=True)
class Fingerprint:
    """What a saved slot must have in common with a starting server to be restored into it.

    The same model file (its path and identity: device, inode, size,
    modification time), the same image projector if any (likewise), the
    same llama-server build (likewise), and the same context, slots, KV cache types, flash attention, RPC workers,
    speculative decoding, extra arguments and environment (which selects
    the devices, and so the backend). The GPU layers and batch sizes may
    differ: they change where the cache lives and how fast it is computed,
    not what it holds.

    Example:
        >>> a = Fingerprint("m.gguf", (1, 2, 3, 4), "llama-server", (5, 6, 7, 8), 4096, 1)
        >>> a.differences(a.saved()), a.differences({**a.saved(), "ctx_size": 2048})
        ([], ['it was saved with context 2048 (this server: 4096)'])
    """

    model: str
    model_identity: tuple[int, ...] | None
    server: str
    server_identity: tuple[int, int, int, int] | None
    ctx_size: int
    parallel: int
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: str = "auto"
    rpc: tuple[str, ...] = ()
    speculative: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()
    env: str = ""
    """A digest of the server's environment variables (their values stay out of the manifest)."""
    mmproj: str = ""
    """The image projector's path (``""``: none); with a projector, images' tokens are in the cache too."""
    mmproj_identity: tuple[int, ...] | None = None

    @classmethod
    def of(cls, config: ServerConfig) -> Fingerprint:
        """The fingerprint of ``config``'s server (the binary's identity is read now).

        Example:
            >>> Fingerprint.of(config).ctx_size  # doctest: +SKIP
            4096
        """
        return cls(
            model=str(config.model), model_identity=None if config.model_identity is None
            else config.model_identity[:4], server=str(config.binary),
            server_identity=_identity(config.binary), ctx_size=config.ctx_size, parallel=config.parallel,
            cache_type_k=config.cache_type_k or "f16", cache_type_v=config.cache_type_v or "f16",
            flash_attn=config.flash_attn or "auto", rpc=config.rpc, speculative=config.speculative,
            extra_args=config.extra_args, env=hashlib.sha256(json.dumps(config.env).encode()).hexdigest()[:16],
            mmproj="" if config.mmproj is None else str(config.mmproj),
            mmproj_identity=None if config.mmproj is None else _identity(config.mmproj),
        )

    def saved(self) -> dict[str, Any]:
        """As a manifest holds it (JSON: tuples become lists)."""
        loaded: dict[str, Any] = json.loads(json.dumps(dict(zip((f.name for f in fields(self)), astuple(self),
                                                                strict=True))))
        return loaded

    @property
    def digest(self) -> str:
        """Names this configuration's files: the same for every server with this fingerprint."""
        return hashlib.sha256(json.dumps(self.saved(), sort_keys=True).encode()).hexdigest()[:24]

    @property
    def lineage(self) -> str:
        """Names this model file with this llama-server build, whatever the other options."""
        key = [self.model, self.model_identity, self.server, self.server_identity]
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]

    def differences(self, saved: Mapping[str, Any]) -> list[str]:
        """Why a cache saved with fingerprint ``saved`` (a manifest's) does not fit this server, in words.

        Example:
            >>> a = Fingerprint("m.gguf", (1, 2, 3, 4), "llama-server", (5, 6, 7, 8), 4096, 1)
            >>> a.differences({**a.saved(), "model_identity": [1, 2, 9, 9], "cache_type_k": "q8_0"})
            ['the model file has changed since', 'its K cache type was q8_0 (this server: f16)']
        """
        mine, said = self.saved(), []
        for name, value in mine.items():
            path = name.removesuffix("_identity")  # another path says the file is another already
            if saved.get(name) != value and (path == name or saved.get(path) == mine[path]):
                said.append(_DIFFERENCES[name](saved.get(name), value))
        return said


_DIFFERENCES: dict[str, Callable[[Any, Any], str]] = {
    "model": lambda was, now: f"it was saved for another model file ({was})",
    "model_identity": lambda was, now: "the model file has changed since",
    "server": lambda was, now: f"it was saved by another llama-server ({was})",
    "server_identity": lambda was, now: "llama-server has been rebuilt or replaced since",
    "ctx_size": lambda was, now: f"it was saved with context {was} (this server: {now})",
    "parallel": lambda was, now: f"it was saved with {was} slots (this server: {now})",
    "cache_type_k": lambda was, now: f"its K cache type was {was} (this server: {now})",
    "cache_type_v": lambda was, now: f"its V cache type was {was} (this server: {now})",
    "flash_attn": lambda was, now: f"flash attention was {was} (this server: {now})",
    "rpc": lambda was, now: "it was saved with other RPC workers",
    "speculative": lambda was, now: "it was saved with other speculative decoding",
    "extra_args": lambda was, now: "it was saved with other extra llama-server arguments",
    "env": lambda was, now: "it was saved with another server environment (devices or backend)",
    "mmproj": lambda was, now: (f"it was saved with the image projector {was}" if was else
                                "it was saved without an image projector") + (f" (this server: {now})" if now else
                                                                              " (this server has none)"),
    "mmproj_identity": lambda was, now: "the image projector file has changed since",
}


class Refusal(NamedTuple):
    """Why a saved slot is not restored; ``damaged``: it is ours but not what was saved (it is set aside).

    Example:
        >>> Refusal("its file is gone", damaged=True).why
        'its file is gone'
    """

    why: str
    damaged: bool


@dataclass(frozen=True)
class Entry:
    """One saved slot: its manifest (read, not yet checked against the file) and where it lives.

    Example:
        >>> e = Entry(Path("/w/abc-0.json"), {"file": "abc-0-x.bin", "tokens": 897, "bytes": 20681996, "slot": 0})
        >>> e.file, e.tokens, e.size
        (PosixPath('/w/abc-0-x.bin'), 897, 20681996)
    """

    manifest: Path
    data: dict[str, Any]

    @property
    def file(self) -> Path:
        """The slot file (a plain name beside the manifest: a manifest cannot point elsewhere)."""
        return self.manifest.with_name(Path(str(self.data["file"])).name)

    @property
    def tokens(self) -> int:
        """Tokens the slot held when it was saved."""
        return int(self.data["tokens"])

    @property
    def size(self) -> int:
        """Bytes of the slot file, as llama-server wrote them."""
        return int(self.data["bytes"])

    @property
    def used_at(self) -> float:
        """When it was last saved or restored (seconds since the epoch)."""
        return float(self.data.get("used_at") or self.data.get("saved_at") or 0.0)


def read_tokens(path: Path, limit: int) -> list[int]:
    """The prompt tokens at the head of a llama.cpp slot file, checked against its size; a ``ValueError`` says why not.

    The head is llama.cpp's sequence state (magic, version, token count,
    tokens), whose tokens are llama-server's packed list (a null token,
    its version, then the length and the tokens). At most ``limit`` tokens are
    believed; text tokens end at the first media chunk.

    Example:
        >>> import tempfile
        >>> packed = [-1, 1, 3, 10, 11, 12, 0]
        >>> head = struct.pack(f"<III{len(packed)}i", 0x67677371, 3, len(packed), *packed)
        >>> path = Path(tempfile.mkdtemp()) / "slot.bin"; _ = path.write_bytes(head + bytes(64))
        >>> read_tokens(path, 4096)
        [10, 11, 12]
        >>> _ = path.write_bytes(b"not a slot file at all")
        >>> read_tokens(path, 4096)
        Traceback (most recent call last):
        ...
        ValueError: it is not a llama.cpp slot file (its header is 0x20746f6e, version 1819484257)
    """
    with path.open("rb") as source:
        size = os.fstat(source.fileno()).st_size
        head = source.read(12)
        if len(head) < 12:
            raise ValueError(f"it is truncated ({size} bytes)")
        magic, version, count = struct.unpack("<III", head)
        if magic != _SEQ_MAGIC or version != _SEQ_VERSION:
            raise ValueError(f"it is not a llama.cpp slot file (its header is {magic:#x}, version {version})")
        if count > limit + 16 or 12 + 4 * count >= size:
            raise ValueError(f"its header claims {count} tokens, more than its {size} bytes or the context hold")
        packed = struct.unpack(f"<{count}i", source.read(4 * count))
    if packed and packed[0] == _NULL_TOKEN:
        if count < 3 or not 0 <= packed[2] <= count - 3:
            raise ValueError("its token list is damaged")
        packed = packed[3:3 + packed[2]]
    text = []
    for token in packed:
        if token < 0:
            break
        text.append(token)
    return text


_Item = tuple[Sequence[Path], str, int, float]
"""What the folder holds, one thing at a time: ``(paths, kind, bytes, last used)``; kind is ``entry``,
``quarantine`` or ``loose`` (a file no manifest lists)."""


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def _item(entry: Entry) -> _Item:
    return (entry.manifest, entry.file), "entry", _size(entry.manifest) + _size(entry.file), entry.used_at


def _model_names(entry: Entry) -> set[str]:
    """What ``rocm-nb prompt-cache clear MODEL`` may call the model of ``entry``: its path, file name or stem."""
    saved = str((entry.data.get("fingerprint") or {}).get("model") or "")
    return {saved, Path(saved).name, Path(saved).stem} - {""}


def _private_file(path: Path) -> str | None:
    """Why ``path`` is not a plain file of this user that nobody else can write, or ``None``."""
    info = path.lstat()
    if not stat.S_ISREG(info.st_mode):
        return f"{path.name} is not a plain file"
    if info.st_uid != os.geteuid():
        return f"{path.name} belongs to uid {info.st_uid}, not to you"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path.name} can be written by other users (mode {stat.S_IMODE(info.st_mode):o})"
    return None


class WarmStore:
    """The saved prompt caches in ``root``, kept to ``budget`` bytes; ``clock`` says when (tests pass their own).

    Example:
        >>> store = WarmStore.default().open()  # doctest: +SKIP
        >>> [(e.data["model_name"], e.tokens) for e in store.entries()]  # doctest: +SKIP
        [('SmolLM2-135M-Instruct.Q4_1.gguf', 2803)]
    """

    def __init__(self, root: Path, *, budget: int = DEFAULT_BUDGET, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.budget = budget
        self._clock = clock

    @classmethod
    def default(cls, root: Path | None = None, environ: Mapping[str, str] | None = None) -> WarmStore:
        """The store at ``root`` (default :func:`~rocm_nb._paths.warm_root`) with the budget ``environ`` sets.

        Example:
            >>> WarmStore.default(Path("/tmp/w"), {"ROCM_NB_WARM_BUDGET": "1GiB"}).budget
            1073741824
        """
        return cls(warm_root(environ) if root is None else root, budget=budget_from(environ))

    def open(self) -> Self:
        """Create the folder (0700) or check it; a :class:`~rocm_nb.errors.RuntimeDirError` if it cannot be used."""
        private_folder(self.root, "saved prompt caches", "set ROCM_NB_WARM_DIR to a folder of your own, or pass "
                                                         "warm_cache=False")
        return self

    # -- reading -----------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Every manifest of this format that is a private file of this user (others are passed over), newest first."""
        found = []
        for path in self.root.glob("*.json"):
            try:
                problem = _private_file(path)
                data = json.loads(path.read_text()) if problem is None else None
            except (OSError, ValueError) as exc:
                problem, data = str(exc), None
            if not isinstance(data, dict) or data.get("format") != FORMAT:
                _log.debug("saved prompt cache %s passed over: %s", path, problem or "not a manifest of this format")
                continue
            found.append(Entry(path, data))
        return sorted(found, key=lambda entry: entry.used_at, reverse=True)

    def entry(self, fingerprint: Fingerprint, slot: int) -> Entry | None:
        """The saved cache of ``slot`` for exactly this fingerprint, if any."""
        path = self.root / f"{fingerprint.digest}-{slot}.json"
        return next((entry for entry in self.entries() if entry.manifest == path), None)

    def stranger(self, fingerprint: Fingerprint, slot: int) -> str | None:
        """Why the manifest where ``slot``'s would be was not read (it is not a private file of yours), or ``None``."""
        path = self.root / f"{fingerprint.digest}-{slot}.json"
        try:
            return _private_file(path)
        except OSError:
            return None

    def others(self, fingerprint: Fingerprint) -> list[Entry]:
        """Caches of the same model file (same path, or device and inode) with another fingerprint, newest first."""
        def same_model(saved: Mapping[str, Any]) -> bool:
            identity = saved.get("model_identity")
            return saved.get("model") == fingerprint.model or (
                isinstance(identity, list) and fingerprint.model_identity is not None
                and identity[:2] == list(fingerprint.model_identity[:2]))

        return [entry for entry in self.entries() if entry.data.get("digest") != fingerprint.digest
                and isinstance(entry.data.get("fingerprint"), dict) and same_model(entry.data["fingerprint"])]

    def check(self, entry: Entry, fingerprint: Fingerprint, ctx: int) -> Refusal | None:
        """Why ``entry`` must not go into a server with ``fingerprint`` (``ctx`` tokens a slot), or ``None``."""
        differences = fingerprint.differences(entry.data.get("fingerprint") or {})
        if differences:
            return Refusal("; ".join(differences), damaged=False)
        try:
            problem = (_private_file(entry.manifest) or _private_file(entry.file)
                       or (str(reason) if (reason := untrusted(entry.file, up_to=self.root)) else None))
            if problem is not None:
                return Refusal(problem, damaged=False)
            size = entry.file.stat().st_size
            if size != entry.size:
                return Refusal(f"its file holds {size:,} bytes, its manifest says {entry.size:,} (truncated?)",
                               damaged=True)
            read_tokens(entry.file, ctx)
        except FileNotFoundError:
            return Refusal("its file is gone", damaged=True)
        except (OSError, ValueError) as exc:
            return Refusal(str(exc), damaged=True)
        return None

    def not_reusable(self, fingerprint: Fingerprint) -> str | None:
        """Why this model and llama-server build keep no cache (a restore was not reused), or ``None``."""
        marked = self._marks().get(fingerprint.lineage)
        return None if marked is None else str(marked.get("why", "a restored cache was not reused"))

    def not_reusable_models(self) -> list[str]:
        """The model files (paths) for which no cache is kept any more, with some llama-server build."""
        return sorted({str(mark.get("model")) for mark in self._marks().values()})

    def predict(self, fingerprint: Fingerprint, tokens: int) -> float | None:
        """Seconds a save of ``tokens`` tokens should take, from the last saves (``None`` with no history)."""
        entries = self.entries()
        same = next((e for e in entries if e.data.get("digest") == fingerprint.digest and e.tokens), None)
        timed = next((e for e in entries if e.data.get("save_seconds")), None)
        if same is None or timed is None:
            return None
        rate = timed.size / max(float(timed.data["save_seconds"]), 1e-3)
        return tokens * same.size / same.tokens / rate

    def usage(self) -> int:
        """Bytes the folder holds (quarantine included)."""
        return sum(size for _, _, size, _ in self._items())

    # -- writing -----------------------------------------------------------------------------

    def partial_name(self, fingerprint: Fingerprint, slot: int) -> str:
        """A fresh name for llama-server to write slot ``slot`` into (a plain name, as its API wants)."""
        return f"{fingerprint.digest}-{slot}-{secrets.token_hex(6)}.bin.partial"

    def commit(self, fingerprint: Fingerprint, slot: int, partial: str, *, tokens: int, size: int, seconds: float,
               model_name: str) -> Entry | None:
        """Make a finished save the entry of ``slot``: the file 0600, checked, renamed, its manifest written.

        A file that is missing or not the size llama-server reported is
        removed and ``None`` returned. The entry it replaces is removed.
        """
        written = self.root / partial
        try:
            os.chmod(written, 0o600)
            if written.stat().st_size != size or _private_file(written) is not None:
                raise ValueError(f"{written.name} is not what llama-server reported ({size:,} bytes)")
        except (OSError, ValueError) as exc:
            _log.debug("saved prompt cache of slot %d dropped: %s", slot, exc)
            written.unlink(missing_ok=True)
            return None
        final = written.with_name(partial.removesuffix(".partial"))
        written.replace(final)
        previous = self.entry(fingerprint, slot)
        now = self._clock()
        data = {"format": FORMAT, "slot": slot, "file": final.name, "tokens": tokens, "bytes": size, "saved_at": now,
                "used_at": now, "save_seconds": seconds, "model_name": model_name, "digest": fingerprint.digest,
                "lineage": fingerprint.lineage, "fingerprint": fingerprint.saved()}
        entry = Entry(write_private_json(self.root / f"{fingerprint.digest}-{slot}.json", data), data)
        if previous is not None and previous.file != final:
            previous.file.unlink(missing_ok=True)
        return entry

    def touch(self, entry: Entry) -> None:
        """Mark ``entry`` used now (it was restored): the last to be evicted."""
        with contextlib.suppress(OSError):
            write_private_json(entry.manifest, {**entry.data, "used_at": self._clock()})

    def quarantine(self, entry: Entry, why: str) -> None:
        """Set ``entry`` aside in ``quarantine/`` with the reason: never offered again, kept until evicted."""
        folder = self.root / QUARANTINE
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
            if entry.file.exists():
                entry.file.replace(folder / entry.file.name)
            write_private_json(folder / f"{entry.file.name}.json", {**entry.data, "why": why,
                                                                    "quarantined_at": self._clock()})
        except OSError as exc:
            _log.debug("could not quarantine %s (%s): removing it", entry.file, exc)
        self.remove(entry)

    def remove(self, entry: Entry) -> None:
        """Delete ``entry``: its file and its manifest."""
        for path in (entry.file, entry.manifest):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    def mark_not_reusable(self, fingerprint: Fingerprint, why: str) -> None:
        """Keep no cache for this model and build from now on, and drop the ones kept (``why`` says why)."""
        marks = self._marks()
        marks[fingerprint.lineage] = {"model": fingerprint.model, "server": fingerprint.server, "why": why,
                                      "since": self._clock()}
        with contextlib.suppress(OSError):
            write_private_json(self.root / NOT_REUSABLE, marks)
        for entry in self.entries():
            if entry.data.get("lineage") == fingerprint.lineage:
                self.remove(entry)

    def evict(self) -> list[Path]:
        """Remove what a save left unfinished, then the least recently used files until the folder fits the budget."""
        now, removed = self._clock(), list[Path]()
        items = sorted(self._items(), key=lambda item: item[3])
        total = sum(size for _, _, size, _ in items)
        for paths, kind, size, used in items:
            stale = kind == "loose" and now - used > _STALE_S
            if not stale and (kind == "loose" or total <= self.budget):
                continue
            for path in paths:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            total -= size
            removed.extend(paths)
        if removed:
            _log.debug("saved prompt caches: removed %s (budget %d bytes)", [p.name for p in removed], self.budget)
        return removed

    def clear(self, model: str | None = None) -> tuple[int, int]:
        """Delete the saved caches (of the model file named ``model``: name, stem or path; or all); ``(files, bytes)``.

        Without ``model`` the quarantine, leftovers and the not-reusable marks go too.
        """
        if model is None:
            items = self._items()
            with contextlib.suppress(OSError):
                (self.root / NOT_REUSABLE).unlink(missing_ok=True)
        else:
            items = [_item(entry) for entry in self.entries() if model in _model_names(entry)]
        files = size = 0
        for paths, _, item_size, _ in items:
            for path in paths:
                with contextlib.suppress(OSError):
                    path.unlink()
                    files += 1
            size += item_size
        return files, size

    # -- the folder's contents -----------------------------------------------------------------

    def _items(self) -> list[_Item]:
        """``(paths, kind, bytes, last used)`` for each entry, quarantined file and loose file (no manifest)."""
        entries = self.entries()
        listed = {path for entry in entries for path in (entry.manifest, entry.file)}
        items = [_item(entry) for entry in entries]
        quarantined = self.root / QUARANTINE
        for path in sorted(quarantined.iterdir()) if quarantined.is_dir() else []:
            with contextlib.suppress(OSError):
                items.append(((path,), "quarantine", _size(path), path.lstat().st_mtime))
        for path in self.root.iterdir() if self.root.is_dir() else []:
            if path.suffix in (".bin", ".partial", ".tmp") and path not in listed:
                with contextlib.suppress(OSError):
                    items.append(((path,), "loose", _size(path), path.lstat().st_mtime))
        return items

    def _marks(self) -> dict[str, dict[str, Any]]:
        path = self.root / NOT_REUSABLE
        try:
            if _private_file(path) is None:
                marks = json.loads(path.read_text())
                return marks if isinstance(marks, dict) else {}
        except (OSError, ValueError):
            pass
        return {}
