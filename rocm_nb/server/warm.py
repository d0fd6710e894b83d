"""Warm after a restart: each slot's prompt cache is saved when its server closes and restored when it starts again.

A notebook restarts its kernel often, and rocm_nb stops llama-server with
it: without this, the first cell after a restart reads its whole prompt
again (a 2,803-token prompt took 16 s on the CPU here). With it, a
:class:`~rocm_nb.LocalModel` that closes normally (``close()``, leaving
``with``, kernel shutdown or restart, the end of the interpreter) saves
each slot holding at least :data:`MIN_TOKENS` tokens with llama-server's
own ``POST /slots/{id}?action=save`` (``--slot-save-path``), and the next
server with the same model file and a compatible configuration
(:class:`~rocm_nb.server._warm_store.Fingerprint`) restores them before
it answers its first request: the same prompt then costs one token.

* **Proved, not claimed.** llama-server reports a restore as done even when
  it will read the whole prompt again (sliding-window and hybrid models:
  Gemma 3, Qwen3.5-style). So each restored slot is probed at once: its own
  tokens are sent back as a prompt and the server's first progress report
  says how many it took from the cache. If that is not all of them,
  :attr:`WarmStart.note` says "restored but not reusable with this model",
  nothing more is saved for that model with that llama-server build, and the
  probe is cut off (it costs at most one batch).
* **Within the teardown bound.** Saving may take
  :data:`~rocm_nb.server._warm_store.SAVE_BUDGET` seconds of ``close()``
  (``ROCM_NB_WARM_SAVE_S``: :func:`~rocm_nb.server._warm_store.save_budget`); a slot whose save the last saves
  say would not fit is skipped, and so is one that runs over (both said at debug level on the
  ``rocm_nb`` logger). A killed kernel (``kill -9``, a restart that timed
  out) saves nothing: its llama-server dies with it.
* **Safe by construction.** The files live in a private folder with a disk
  budget; what may be restored, and what happens to a file llama-server
  refuses or crashes on, is :mod:`rocm_nb.server._warm_store`'s job.
* **Where it applies.** Models started by ``LocalModel`` (on by default;
  ``warm_cache=False`` or ``%rocm_load --no-warm-cache`` turn it off).
  Not embedding or reranking servers (their slots keep nothing between
  inputs), not :func:`~rocm_nb.client.connect`\\ ed servers (not ours to
  stop), not a :class:`~rocm_nb.LocalRouter`: the router starts and evicts
  its children itself, so a child's cache is lost when it is evicted, with
  no moment for rocm_nb to save it, and restoring at start would load every
  model. With a speculative draft model only the main model's cache is
  kept (llama-server saves no draft state): the text is the same, drafts
  are accepted less until the draft has read the context again. Through
  RPC workers it works as on one machine (llama-server moves the cache).

``docs/warm-cache.md`` says what is kept, where, for how long, and how to
clear it (``rocm-nb prompt-cache``).

Example:
    >>> str(WarmStart(tokens=2803, size=61 * 2**20, seconds=0.08))
    'restored 2,803 cached tokens (61 MiB) in 0.08 s'
    >>> with LocalModel("smollm2-135m") as model:  # doctest: +SKIP
    ...     print(model.warm_start)
    restored 2,803 cached tokens (61 MiB) in 0.08 s
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from rocm_nb._units import human_bytes
from rocm_nb.errors import RocmNbError
from rocm_nb.server._warm_store import Entry, Fingerprint, WarmStore, read_tokens

if TYPE_CHECKING:
    from rocm_nb.server import ServerConfig

__all__ = [
    "MIN_TOKENS",
    "CacheListing",
    "SavedCache",
    "SlotAPI",
    "WarmStart",
    "clear_saved_caches",
    "restore_slots",
    "save_slots",
    "saved_caches",
]

_log = logging.getLogger("rocm_nb")

MIN_TOKENS = 128
"""A slot holding fewer tokens than this is not saved: reading them again costs less than keeping them."""

RESTORE_TIMEOUT = 120.0
"""Seconds one restore (reading the file into the KV cache) may take; a hang guard."""

PROBE_TIMEOUT = 120.0
"""Seconds the proof of reuse may wait for the server's first progress report; a hang guard."""


class SlotRefused(Exception):
    """llama-server answered a slot request with an error (the message is its own)."""


class SlotAPI:
    """llama-server's slot endpoints over plain HTTP (stdlib only: it also runs at interpreter exit).

    Example:
        >>> api = SlotAPI("http://127.0.0.1:8080", "key")
        >>> api.restore(0, "abc-0-1.bin", timeout=10)  # doctest: +SKIP
        {'id_slot': 0, 'filename': 'abc-0-1.bin', 'n_restored': 2803, 'n_read': 64553100, ...}
    """

    def __init__(self, base_url: str, api_key: str) -> None:
        parts = urlsplit(base_url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    def _open(self, method: str, path: str, body: object, timeout: float) -> tuple[http.client.HTTPConnection,
                                                                                    http.client.HTTPResponse]:
        connection = http.client.HTTPConnection(self._host, self._port, timeout=max(timeout, 0.01))
        try:
            connection.request(method, path, body=None if body is None else json.dumps(body), headers=self._headers)
            return connection, connection.getresponse()
        except BaseException:
            connection.close()
            raise

    def _call(self, method: str, path: str, body: object = None, *, timeout: float, limit: int = 1 << 20) -> Any:
        connection, response = self._open(method, path, body, timeout)
        with contextlib.closing(connection):
            data = response.read(limit)
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        if response.status != 200:
            message = answer.get("error", {}).get("message") if isinstance(answer, dict) else None
            raise SlotRefused(str(message or f"HTTP {response.status}")[:300])
        return answer

    def slots(self, *, timeout: float) -> list[dict[str, Any]]:
        """``GET /slots``: each slot's id and, once it has served, its token count (``n_prompt_tokens``)."""
        answer = self._call("GET", "/slots", timeout=timeout, limit=1 << 24)  # --slots-debug adds each prompt
        return [slot for slot in answer if isinstance(slot, dict)] if isinstance(answer, list) else []

    def save(self, slot: int, filename: str, *, timeout: float) -> dict[str, Any]:
        """Save slot ``slot`` into ``filename`` in the server's ``--slot-save-path`` (``n_saved``, ``n_written``)."""
        answer: dict[str, Any] = self._call("POST", f"/slots/{slot}?action=save", {"filename": filename},
                                            timeout=timeout)
        return answer

    def restore(self, slot: int, filename: str, *, timeout: float) -> dict[str, Any]:
        """Restore slot ``slot`` from ``filename`` (``n_restored``, ``n_read``)."""
        answer: dict[str, Any] = self._call("POST", f"/slots/{slot}?action=restore", {"filename": filename},
                                            timeout=timeout)
        return answer

    def erase(self, slot: int, *, timeout: float) -> None:
        """Empty slot ``slot``'s cache."""
        self._call("POST", f"/slots/{slot}?action=erase", {}, timeout=timeout)

    def probe(self, slot: int, tokens: Sequence[int], *, timeout: float) -> tuple[int, int]:
        """Send ``tokens`` to slot ``slot`` for one token: ``(tokens taken from the cache, tokens in all)``.

        llama-server decides what it can reuse before it computes anything,
        and says so in its first progress report. When that is not all of
        them the request is cut off there (closing the stream cancels it), so a
        cache that cannot be reused costs at most one batch; when it is, the
        request runs to its end, one token, and must end without an error.
        """
        body = {"prompt": list(tokens), "n_predict": 1, "temperature": 0.0, "stream": True, "return_progress": True,
                "cache_prompt": True, "id_slot": slot}
        connection, response = self._open("POST", "/completion", body, timeout)
        taken: tuple[int, int] | None = None
        with contextlib.closing(connection):
            if response.status != 200:
                raise SlotRefused(response.read(2000).decode("utf-8", "replace"))
            for _ in range(256):
                line = response.readline(1 << 16)
                if not line:
                    break
                if not line.startswith(b"data:"):
                    continue
                event = json.loads(line[5:])
                if not isinstance(event, dict) or "error" in event:
                    raise SlotRefused(f"the first request after the restore failed: {str(event)[:200]}")
                progress = event.get("prompt_progress")
                if taken is None and isinstance(progress, dict):
                    taken = int(progress["cache"]), int(progress["total"])
                    if taken[0] + 1 < taken[1]:
                        return taken  # not reused: cut off before the server reads it all again
                if event.get("stop") and taken is not None:
                    return taken
        raise SlotRefused("the first request after the restore ended without its progress report and its answer")


@dataclass(frozen=True)
class WarmStart:
    """What a server's start restored from the saved prompt cache, proved reused; ``note`` says it in one line.

    ``note`` is empty when there was nothing to restore and nothing to say.
    ``restart`` means llama-server crashed on a saved file (set aside): the
    caller starts it again without one.

    Example:
        >>> WarmStart(notes=("saved prompt cache not restored: the model file has changed since",)).note
        'saved prompt cache not restored: the model file has changed since'
    """

    tokens: int = 0
    size: int = 0
    seconds: float = 0.0
    notes: tuple[str, ...] = ()
    restart: bool = False

    @property
    def note(self) -> str:
        """One line: what was restored (``restored 2,803 cached tokens (61 MiB) in 0.08 s``), then anything amiss."""
        restored = (f"restored {self.tokens:,} cached tokens ({human_bytes(self.size)}) in {self.seconds:.2f} s"
                    if self.tokens else "")
        return "; ".join(part for part in (restored, *self.notes) if part)

    def __str__(self) -> str:
        return self.note


def _restore_one(api: SlotAPI, entry: Entry, slot: int, slot_ctx: int) -> tuple[int, int, int, int]:
    """Restore ``entry`` into ``slot`` and probe it: ``(tokens restored, bytes read, probe tokens from the cache,
    probe tokens)``."""
    tokens = read_tokens(entry.file, slot_ctx)[:max(slot_ctx - 2, 1)]  # a probe must leave room for a token
    answer = api.restore(slot, entry.file.name, timeout=RESTORE_TIMEOUT)
    cached, total = api.probe(slot, tokens, timeout=PROBE_TIMEOUT)
    return int(answer.get("n_restored", 0)), int(answer.get("n_read", 0)), cached, total


def restore_slots(api: SlotAPI, config: ServerConfig, store: WarmStore, *, died: Callable[[], bool],
                  clock: Callable[[], float] = time.perf_counter) -> WarmStart:
    """Restore the saved caches of ``config``'s slots into a server that just became ready, and prove each reused.

    ``died()`` says (waiting a moment) whether the server has exited: a
    request that fails on a server that died means it crashed on the file,
    which is then set aside and :attr:`WarmStart.restart` is set. A file
    the server refuses is set aside too, and the slot emptied; either way
    the server keeps working.

    Example:
        >>> restore_slots(SlotAPI(server.base_url, server.api_key), config, store,  # doctest: +SKIP
        ...               died=lambda: server.wait(2.0) is not None).note
        'restored 2,803 cached tokens (61 MiB) in 0.08 s'
    """
    began = clock()
    fingerprint = Fingerprint.of(config)
    try:
        store.open()
    except (RocmNbError, OSError) as exc:
        return WarmStart(notes=(f"prompt cache not kept: {exc}",))
    why = store.not_reusable(fingerprint)
    if why is not None:
        return WarmStart(notes=(f"no prompt cache is kept for this model with this llama-server: {why}",))
    slot_ctx = max(config.ctx_size // config.parallel, 1)
    restored = size = 0
    notes: list[str] = []
    entries = [(slot, store.entry(fingerprint, slot)) for slot in range(config.parallel)]
    for slot, entry in entries:
        stranger = store.stranger(fingerprint, slot) if entry is None else None
        if stranger is not None:
            notes.append(f"saved prompt cache of slot {slot} not restored: {stranger}")
        if entry is None:
            continue
        refusal = store.check(entry, fingerprint, slot_ctx)
        if refusal is not None:
            if refusal.damaged:  # ours, but not what was saved: set aside (another user's file is left alone)
                store.quarantine(entry, refusal.why)
            notes.append(f"saved prompt cache of slot {slot} not restored: {refusal.why}")
            continue
        try:
            tokens, read, cached, total = _restore_one(api, entry, slot, slot_ctx)
        except (OSError, http.client.HTTPException, ValueError, SlotRefused) as exc:
            if died():
                store.quarantine(entry, f"llama-server crashed restoring it ({exc})")
                return WarmStart(notes=(f"llama-server crashed restoring the saved prompt cache of slot {slot}: "
                                        "the file was set aside and the server started again without it",),
                                 restart=True)
            store.quarantine(entry, f"llama-server refused it ({exc})")
            _erase(api, slot)
            notes.append(f"saved prompt cache of slot {slot} ignored: llama-server refused it ({exc}); set aside")
            continue
        if cached + 1 < total:  # llama-server always computes a prompt's last token again: one is fine
            _erase(api, slot)
            again = f"llama-server read {total - cached:,} of {total:,} tokens again"
            store.mark_not_reusable(fingerprint, f"a restored cache was not reused: {again} (sliding-window or "
                                                 "hybrid attention?)")
            return WarmStart(notes=(f"restored but not reusable with this model: {again}; no prompt cache will be "
                                    "kept for it with this llama-server",))
        store.touch(entry)
        restored, size = restored + tokens, size + read
    if not any(entry for _, entry in entries) and not notes:
        other = store.others(fingerprint)
        if other:
            notes.append("saved prompt cache not restored: "
                         + "; ".join(fingerprint.differences(other[0].data.get("fingerprint") or {})))
    return WarmStart(tokens=restored, size=size, seconds=clock() - began, notes=tuple(notes))


def _erase(api: SlotAPI, slot: int) -> None:
    try:
        api.erase(slot, timeout=10.0)
    except (OSError, http.client.HTTPException, SlotRefused) as exc:
        _log.debug("slot %d not emptied: %s", slot, exc)


def save_slots(api: SlotAPI, config: ServerConfig, store: WarmStore, *, until: float,
               clock: Callable[[], float] = time.perf_counter) -> int:
    """Save each slot of ``config``'s server holding at least :data:`MIN_TOKENS` tokens, by ``clock()`` time ``until``.

    Returns how many were saved. Never raises: what is not saved, and why,
    goes to the ``rocm_nb`` logger at debug level.

    Example:
        >>> save_slots(SlotAPI(server.base_url, server.api_key), config, store,  # doctest: +SKIP
        ...            until=time.perf_counter() + SAVE_BUDGET)
        1
    """
    fingerprint = Fingerprint.of(config)
    try:
        store.open()
        why = store.not_reusable(fingerprint) or ("the disk budget is 0" if store.budget <= 0 else None)
        slots = [] if why else api.slots(timeout=max(until - clock(), 0.05))
    except (RocmNbError, OSError, http.client.HTTPException, SlotRefused) as exc:
        why, slots = str(exc), []
    if why:
        _log.debug("prompt cache of %s not saved: %s", config.model.name, why)
    saved = 0
    for info in slots:
        slot, tokens = info.get("id"), info.get("n_prompt_tokens")
        if not isinstance(slot, int) or not isinstance(tokens, int) or tokens < MIN_TOKENS:
            _log.debug("slot %s not saved: it holds %s tokens (fewer than %d)", slot, tokens or 0, MIN_TOKENS)
            continue
        left, predicted = until - clock(), store.predict(fingerprint, tokens)
        if left <= 0 or (predicted is not None and predicted > left):
            _log.debug("slot %d not saved: %d tokens would take about %s s, and %.2f s is left of the time the "
                       "teardown may spend saving", slot, tokens, "?" if predicted is None else f"{predicted:.2f}",
                       max(left, 0.0))
            continue
        name, began = store.partial_name(fingerprint, slot), clock()
        try:
            answer = api.save(slot, name, timeout=left)
        except TimeoutError:
            _log.debug("slot %d not saved: the save ran over the time the teardown may spend saving", slot)
            break
        except (OSError, http.client.HTTPException, SlotRefused) as exc:
            _log.debug("slot %d not saved: %s", slot, exc)
            continue
        entry = store.commit(fingerprint, slot, name, tokens=int(answer.get("n_saved", tokens)),
                             size=int(answer.get("n_written", -1)), seconds=clock() - began,
                             model_name=config.model.name)
        if entry is not None:
            _log.debug("slot %d saved: %d tokens, %d bytes in %.3f s", slot, entry.tokens, entry.size, clock() - began)
            saved += 1
    try:
        store.evict()
    except OSError as exc:
        _log.debug("saved prompt caches not evicted: %s", exc)
    return saved


# -- for people: what is kept, and clearing it ------------------------------------------------------


@dataclass(frozen=True)
class SavedCache:
    """One saved slot, as ``rocm-nb prompt-cache`` lists it.

    Example:
        >>> SavedCache("m.gguf", 4096, 0, 2803, 61 * 2**20, 0.0, 0.0).size
        63963136
    """

    model: str
    ctx_size: int
    slot: int
    tokens: int
    size: int
    saved_at: float
    used_at: float


@dataclass(frozen=True)
class CacheListing:
    """The saved prompt caches of this user: each slot, the folder, its total against the budget.

    Example:
        >>> print(CacheListing(Path("/w"), [], total=0, budget=2**31))
        no saved prompt cache in /w (budget 2.0 GiB)
    """

    folder: Path
    caches: list[SavedCache]
    total: int
    budget: int
    quarantined: int = 0
    not_reusable: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        def when(stamp: float) -> str:
            return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")

        lines = [f"{'model':<40} {'ctx':>6} {'slot':>4} {'tokens':>8} {'size':>9}  last used"] if self.caches else []
        lines += [f"{c.model[:40]:<40} {c.ctx_size:>6} {c.slot:>4} {c.tokens:>8,} {human_bytes(c.size):>9}  "
                  f"{when(c.used_at)}" for c in self.caches]
        lines.append(f"{human_bytes(self.total)} of {human_bytes(self.budget)} in {self.folder}" if self.caches
                     else f"no saved prompt cache in {self.folder} (budget {human_bytes(self.budget)})")
        if self.quarantined:
            lines.append(f"{self.quarantined} file(s) set aside in {self.folder / 'quarantine'} (llama-server "
                         "refused or crashed on them)")
        lines += [f"not kept for {model}: a restored cache was not reused" for model in self.not_reusable]
        return "\n".join(lines)


def saved_caches(environ: Mapping[str, str] | None = None) -> CacheListing:
    """What the saved prompt caches hold, and where (``ROCM_NB_WARM_DIR``; the budget: ``ROCM_NB_WARM_BUDGET``).

    Example:
        >>> saved_caches({"ROCM_NB_WARM_DIR": "/nonexistent"}).caches
        []
    """
    store = WarmStore.default(environ=environ)
    if not store.root.is_dir():
        return CacheListing(store.root, [], total=0, budget=store.budget)
    caches = [SavedCache(Path(str(e.data.get("fingerprint", {}).get("model", "?"))).name,
                         int(e.data.get("fingerprint", {}).get("ctx_size", 0)), int(e.data.get("slot", 0)),
                         e.tokens, e.size, float(e.data.get("saved_at", 0.0)), e.used_at) for e in store.entries()]
    quarantine = store.root / "quarantine"
    return CacheListing(store.root, caches, total=store.usage(), budget=store.budget,
                        quarantined=len(list(quarantine.glob("*.bin"))) if quarantine.is_dir() else 0,
                        not_reusable=store.not_reusable_models())


def clear_saved_caches(model: str | None = None, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """Delete the saved prompt caches (of ``model``, a file name, stem or path; or all): ``(files, bytes)`` removed.

    Example:
        >>> clear_saved_caches(environ={"ROCM_NB_WARM_DIR": "/nonexistent"})
        (0, 0)
    """
    store = WarmStore.default(environ=environ)
    return store.clear(model) if store.root.is_dir() else (0, 0)
