"""Many models behind one llama-server: the pinned llama-server's router mode, owned like a ``LocalModel``.

``llama-server --models-dir DIR --models-max N`` (no ``-m``) is a router: it
lists the GGUFs in ``DIR`` as models (a file's name without ``.gguf`` is its
id), starts a child llama-server per model on its first request (or on
``POST /models/load``), stops one on ``POST /models/unload``, and keeps at
most ``N`` loaded, unloading the least recently used. Every request names its
model; one that does not is answered ``400 model name is missing from the
request``. This is how a notebook holds a chat model, an embedding model and
a draft model under one memory budget.

:class:`LocalRouter` runs one with every guarantee of
:class:`~rocm_nb.LocalModel` (it shares its lifecycle,
:class:`~rocm_nb._lease.OwnServer`, ``async with`` included, and its planner): its own session and process group,
a per-session API key in its environment, teardown on ``close()``, at exit
and when the kernel is killed (the parent-death signal and the run record
of :mod:`rocm_nb._process`). The children are the router's: they share its
process group, so stopping the group stops them, and each watches its
stdin, a pipe from the router, and exits when that pipe closes, so even a
router killed outright leaves no child behind (checked with the pinned
build: ``tools/server/server-models.cpp``, ``server_child::setup``).

The server reads a private folder of symbolic links to the models (the
model files themselves are never copied, moved or changed), whether it was
given a folder, a list or a dict: so it serves exactly the models that were
checked here. Each name is checked against the pinned server's folder scan
(``common/preset.cpp``, ``load_from_models_dir``), which would otherwise drop
or rename some silently: it removes every ``.gguf`` from a file's name
(``v1.gguf.gguf`` is listed as ``v1``), takes names holding ``mmproj`` or
starting with ``mtp-``, ``dspark-`` or ``dflash-`` for companions, and keeps
one of two entries with one name. A name it would change, or two models under
one name, are a ``ValueError`` naming both files; each file's header is read
(a file that is no GGUF is :class:`~rocm_nb.errors.InvalidModel`); and once
started the router must list exactly the models it was given (``/v1/models``),
or its start fails. The folder of links is made when the server starts and
goes with it: removed by the same ``close()`` or finaliser that stops it, and
after a kernel killed outright by the next start's reaper, which also kills
children that were still loading (:mod:`rocm_nb._process`).

Example:
    >>> router = LocalRouter({"chat": "smollm2-135m", "small": "smollm2-135m"}, max_loaded=2)  # doctest: +SKIP
    >>> router.chat([{"role": "user", "content": "Hi"}], model="chat").text  # doctest: +SKIP
    >>> router("small").generate("2 + 2 =", max_tokens=4).text  # doctest: +SKIP
    >>> [(child.name, child.rss_bytes) for child in router.loaded()]  # doctest: +SKIP
    [('chat', 150994944), ('small', 150994944)]
    >>> router.close()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import psutil

from rocm_nb._escape import printable
from rocm_nb._lease import ModelState, OwnServer, _on_event_loop
from rocm_nb._options import LoadOptions, choose_machine, plan_server
from rocm_nb._paths import runtime_root
from rocm_nb.binary import ServerBinary
from rocm_nb.client import Client
from rocm_nb.client._accumulator import SO_FAR
from rocm_nb.client._generation import GenerationAPI
from rocm_nb.client.status import ServerStatus
from rocm_nb.errors import GenerationError, ModelNotFound, RocmNbError, ServerUnavailable, with_notes
from rocm_nb.hardware import Backend, Hardware
from rocm_nb.modelfiles.catalog import read_info, resolve_model
from rocm_nb.modelfiles.fit import FitPlan
from rocm_nb.server import LlamaServer, ServerConfig
from rocm_nb.server._registry import ServerRegistry

__all__ = ["LocalRouter", "RouterChild"]

ModelSpec = str | os.PathLike[str]


@dataclass(frozen=True)
class RouterChild:
    """One model a router has loaded: its child llama-server and what it holds in memory.

    ``rss_bytes`` is the child process's resident memory (``None`` if it
    could not be read); ``size_bytes`` the model's weights as the child
    reports them.

    Example:
        >>> RouterChild("chat", "loaded", pid=42, port=8081, rss_bytes=2**27, size_bytes=96576768).state
        'loaded'
    """

    name: str
    state: str
    pid: int | None
    port: int | None
    rss_bytes: int | None
    size_bytes: int | None

    def status(self, backend: str) -> ServerStatus:
        """This child as a ``%rocm_status`` row."""
        return ServerStatus(model=self.name, file=f"router child · {self.state}", backend=backend,
                            state="running" if self.state == "loaded" else self.state, pid=self.pid,
                            port=self.port, rss_bytes=self.rss_bytes)


_DRAFT_PREFIXES = ("mtp-", "dspark-", "dflash-")
"""Names the pinned server's folder scan takes for speculative-decoding drafts (``common/preset.cpp``)."""

_Served = dict[str, tuple[Path, Path]]
"""The models a router serves: name -> (what its link points to: a file or a sub-folder, the model file)."""


def _companion(file_name: str) -> bool:
    """Whether the server's folder scan takes this ``.gguf`` for a projector or a draft, never a model."""
    return "mmproj" in file_name or file_name.startswith(_DRAFT_PREFIXES)


def _check_name(name: object, fix: str) -> str:
    """``name`` if the server would list a ``NAME.gguf`` file as ``NAME``, else a ``ValueError`` ending in ``fix``.

    The pinned server's folder scan (``common/preset.cpp``,
    ``load_from_models_dir``) names a file by its name with *every*
    ``.gguf`` removed, and skips projector and draft files.

    Example:
        >>> _check_name("chat", "")
        'chat'
        >>> _check_name("v1.gguf", "name it 'v1'")
        Traceback (most recent call last):
        ...
        ValueError: 'v1.gguf' cannot name a router model: the server removes every '.gguf' from a model's name \
(it would list this one as 'v1'); name it 'v1'
    """
    if not isinstance(name, str) or not name or "/" in name or "\0" in name or name.startswith("."):
        raise ValueError(f"{name!r} cannot name a router model: use letters, digits, '-', '_' or '.' "
                         f"(not first); {fix}")
    if ".gguf" in name:
        raise ValueError(f"{name!r} cannot name a router model: the server removes every '.gguf' from a model's "
                         f"name (it would list this one as {name.replace('.gguf', '')!r}); {fix}")
    if _companion(f"{name}.gguf"):
        raise ValueError(f"{name!r} cannot name a router model: the server takes a file whose name holds 'mmproj' or "
                         f"starts with {', '.join(_DRAFT_PREFIXES)} for a projector or a draft, never a model; {fix}")
    return name


def _given(models: Sequence[ModelSpec] | Mapping[str, ModelSpec]) -> _Served:
    """The models of a list (named by file name without ``.gguf``) or a dict, each name checked, none twice."""
    served: _Served = {}
    given: dict[str, Path] = {}
    pairs = models.items() if isinstance(models, Mapping) else ((None, spec) for spec in models)
    for key, spec in pairs:
        path = resolve_model(spec)  # named by the path given (a link's own name), linked to the file itself
        if key is None:
            name = _check_name(path.stem, f"name it yourself with a dict: LocalRouter({{'chat': {str(path)!r}}})")
        else:
            name = _check_name(key, "choose another name")
        if name in given:
            raise ValueError(f"two models would be called {name!r}: {given[name]} and {path}; name them "
                             "yourself with a dict: LocalRouter({'a': ..., 'b': ...})")
        given[name], served[name] = path, (path.resolve(), path.resolve())
    return served


def _first_model(sub: Path) -> Path | None:
    """The model the server loads from sub-folder ``sub``: its first shard, or its one model file."""
    files = sorted(p for p in sub.iterdir() if p.name.endswith(".gguf") and p.is_file() and not _companion(p.name))
    candidates = [p for p in files if "-00001-of-" in p.name] or files
    if len(candidates) > 1:
        raise ValueError(f"{sub} holds several models ({', '.join(p.name for p in candidates)}); the server would "
                         "load whichever it happens to list last: keep one model (or one set of shards) per "
                         "sub-folder, with its projector and draft")
    return candidates[0] if candidates else None


def _scan(folder: Path) -> _Served:
    """The models a router over ``folder`` serves, by name, as the pinned server finds them.

    Each ``.gguf`` file is a model named by its file name without any
    ``.gguf``, and each sub-folder a model named by the folder (its first
    shard, or its one model file); projector (``mmproj``) and draft
    (``mtp-``, ``dspark-``, ``dflash-``) files are companions, not models
    (``common/preset.cpp``, ``load_from_models_dir``). Two entries the server
    would list under one name are a ``ValueError`` naming both (the server
    keeps one of them), as is a name it would list empty.

    Example:
        >>> _scan(Path("/nowhere"))
        {}
    """
    served: _Served = {}
    for entry in sorted(folder.iterdir()) if folder.is_dir() else ():
        if entry.is_dir():
            name, model = entry.name, _first_model(entry)
        elif entry.name.endswith(".gguf") and entry.is_file() and not _companion(entry.name):
            name, model = entry.name.replace(".gguf", ""), entry
        else:
            continue
        if model is None:
            continue
        if not name:
            raise ValueError(f"the server would list {entry} as a model with an empty name; rename it")
        if name in served:
            raise ValueError(f"the server would list {served[name][0].name} and {entry.name} in {folder} as one "
                             f"model, {name!r}, and serve only one of them; rename one")
        served[name] = (entry.resolve(), model.resolve())
    return served


class LocalRouter(OwnServer, GenerationAPI):
    """llama-server in router mode over your GGUFs: many models, each request routed by ``model=``.

    Args:
        models: a folder of ``.gguf`` files, a list of models (paths or
            catalogue names; each is named by its file name without
            ``.gguf``) or a dict ``{name: model}``.
        max_loaded: the most models loaded at once (``--models-max``); loading
            one more unloads the least recently used.
        ctx_size, parallel, gpu_layers: each child's context, slots and layers
            on the GPU, planned as ``LocalModel`` plans them: every model is
            planned on its own (its default context is min(trained, 8192), its
            layers what fits the free VRAM), and each child gets the smallest
            context and the fewest layers of those plans (``router.fits`` has
            them), since a router passes one ``-c`` and one ``-ngl`` to all.
        flash_attn, cache_type, cache_type_k, cache_type_v: as for
            :class:`~rocm_nb.LocalModel`, for every child.
        backend, device, gpu_memory: as for :class:`~rocm_nb.LocalModel`: the
            build every child runs (``"vulkan"`` for the Vulkan one), the one
            GPU they use, and the most GPU memory each child may take (each
            model is planned under it alone: with ``max_loaded`` above 1,
            loaded children share the GPU, so divide it).
        server, extra_args, env, timeout, start_timeout, registry, hardware: as
            for :class:`~rocm_nb.LocalModel` (``extra_args`` that change memory
            are refused the same way).

    Its lifecycle is ``LocalModel``'s (:class:`~rocm_nb._lease.OwnServer`):
    ``with``, ``async with``, ``start``, ``close``, ``aclose``. A request
    without ``model=`` raises :class:`~rocm_nb.errors.AmbiguousModel` naming
    the models when there are several; ``router("name")`` is a
    :class:`~rocm_nb.client.Client` whose requests all go to that model.

    Example:
        >>> with LocalRouter("~/models", max_loaded=2) as router:  # doctest: +SKIP
        ...     router.load("qwen3-8b")
        ...     print(router("qwen3-8b").chat([{"role": "user", "content": "Hi"}]).text)
    """

    def __init__(
        self,
        models: ModelSpec | Sequence[ModelSpec] | Mapping[str, ModelSpec],
        *,
        max_loaded: int = 1,
        ctx_size: int | None = None,
        gpu_layers: int | Literal["auto"] | None = None,
        parallel: int = 1,
        flash_attn: str | bool | None = None,
        cache_type: str | None = None,
        cache_type_k: str | None = None,
        cache_type_v: str | None = None,
        backend: Backend | None = None,
        device: int | None = None,
        gpu_memory: int | str | None = None,
        server: ModelSpec | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = 600.0,
        start_timeout: float = 300.0,
        registry: ServerRegistry[ServerConfig, LlamaServer] | None = None,
        hardware: Hardware | None = None,
    ) -> None:
        if isinstance(max_loaded, bool) or not isinstance(max_loaded, int) or max_loaded < 1:
            raise ValueError(f"max_loaded must be a positive integer, got {max_loaded!r}")
        options = LoadOptions.of(ctx_size=ctx_size, gpu_layers=gpu_layers, parallel=parallel, flash_attn=flash_attn,
                                 cache_type=cache_type, cache_type_k=cache_type_k, cache_type_v=cache_type_v,
                                 extra_args=extra_args, env=env, backend=backend, device=device,
                                 gpu_memory=gpu_memory, warm_cache=False)  # why: rocm_nb.server.warm
        self.binary: ServerBinary
        self.binary, machine = choose_machine(server, hardware, options)
        folder = None
        if isinstance(models, str | os.PathLike):
            if Path(models).expanduser().is_dir():
                folder = Path(models).expanduser().resolve()
            models = [models]
        served = _scan(folder) if folder is not None else _given(models)
        if not served:
            raise ValueError(f"{folder} holds no .gguf model: a router needs at least one" if folder is not None else
                             "a router needs at least one model: a folder of .gguf files, a list of models or "
                             "a dict of name -> model")
        links = runtime_root() / f"router-{secrets.token_hex(8)}"
        self.folder: Path = folder or links
        """The folder of models: yours, or for a list or dict the private folder of links made for them."""
        planned = {name: plan_server(read_info(path), path, self.binary, machine, options, name=name)
                   for name, (_, path) in served.items()}  # read_info: a file that is no GGUF fails here
        self.fits: dict[str, FitPlan] = {name: fit for name, (fit, _) in planned.items()}
        """Each model's memory plan, by its name (each child gets the smallest context and fewest layers)."""
        first = next(iter(planned.values()))[1]
        self.config = replace(first, model=links, models_dir=links, models_max=max_loaded,
                              models_links=tuple((name if target.is_dir() else f"{name}.gguf", target)
                                                 for name, (target, _) in served.items()),
                              ctx_size=min(config.ctx_size for _, config in planned.values()),
                              gpu_layers=min(config.gpu_layers for _, config in planned.values()))
        self._unloaded: dict[str, int | None] = {}
        """Models unloaded with :meth:`unload` (not loaded again with :meth:`load`), with the child that served
        each: a reply cut off is explained by them (:meth:`_better_error`)."""
        self._start_timeout = start_timeout
        self._views: dict[str, Client] = {}
        self._what, self._again = f"this router over {self.folder}", "create a new LocalRouter"
        self._hold(self.config, registry, start_timeout=start_timeout, timeout=timeout)
        self.add_close_callback(self._close_views)

    @property
    def backend(self) -> Backend:
        """The backend every child runs on: ``rocm``, ``cuda``, ``vulkan`` or ``cpu``."""
        return self.binary.backend

    def _close_views(self) -> None:
        for view in self._views.values():
            view.close()
        self._views.clear()

    # -- models -----------------------------------------------------------------------------

    def __call__(self, name: str) -> Client:
        """A :class:`~rocm_nb.client.Client` whose every request goes to model ``name`` (closed with the router).

        Example:
            >>> router("chat").chat([{"role": "user", "content": "Hi"}]).text  # doctest: +SKIP
        """
        self._known(name)
        if name not in self._views:
            api = self._client()
            self._views[name] = Client(api.base_url, api.api_key, model=name, deadline=None,
                                       _on_failure=self._better_error)
        return self._views[name]

    def load(self, name: str, *, wait: bool = True) -> None:
        """Load model ``name`` now (else it loads on its first request); with ``wait``, until it is ready.

        Example:
            >>> router.load("chat")  # doctest: +SKIP
        """
        self._known(name)
        self._unloaded.pop(name, None)
        try:
            self._client()._request_json("POST", "/models/load", json={"model": name})
        except GenerationError as exc:
            if "already running" not in str(exc):
                raise
        if wait:
            self._wait(lambda: self._states().get(name) == "loaded", f"{name} to load",
                       failed=lambda: self._states().get(name) not in ("loading", "loaded"))

    def unload(self, name: str) -> None:
        """Unload model ``name``: its child llama-server exits and frees its memory (waited for).

        Example:
            >>> router.unload("chat")  # doctest: +SKIP
        """
        self._known(name)
        child = next((c for c in self.loaded() if c.name == name), None)
        self._unloaded[name] = child.pid if child is not None else None  # before it goes: its replies end here
        self._client()._request_json("POST", "/models/unload", json={"model": name})
        if child is not None and child.pid is not None:
            with contextlib.suppress(psutil.Error):
                psutil.Process(child.pid).wait(self._start_timeout)
        self._wait(lambda: self._states().get(name) not in ("loaded", "loading", "unloading"), f"{name} to unload")

    def _known(self, name: str) -> None:
        """A :class:`~rocm_nb.errors.ModelNotFound` listing the models, unless this router serves ``name``."""
        if name not in self.fits:
            raise ModelNotFound(f"this router serves no model called {printable(repr(name))}; it serves "
                                f"{', '.join(self.fits)}")

    def _better_error(self, exc: Exception, partial: str) -> RocmNbError | None:
        """A failed or cut-off reply, explained: the router was closed, or a model was unloaded meanwhile.

        The models this router unloaded (:meth:`unload`) are named, unless a
        new child serves one again since (the server is asked, except on an
        event loop's thread, which must not wait for it).
        """
        closed = super()._better_error(exc, partial)
        if closed is not None or not self._unloaded:
            return closed
        gone = dict(self._unloaded)
        if not _on_event_loop():
            try:
                now = {child.name: child.pid for child in self.loaded()}
            except RocmNbError:  # the router itself does not answer: the unload is not the likely cause
                return None
            # a new child (another process) serves it again: not this unload's doing; the same child, none,
            # or one whose process is already gone (listed without a pid while the router catches up) is
            gone = {name: pid for name, pid in gone.items() if now.get(name) in (None, pid)}
        if not gone:
            return None
        names = ", ".join(sorted(gone))
        return with_notes(ServerUnavailable(
            f"the reply was cut off: this router unloaded {names} (router.unload) while it ran", partial=partial),
            SO_FAR if partial else "", f"Load it again (router.load({sorted(gone)[0]!r})) and ask again.")

    def loaded(self) -> list[RouterChild]:
        """The models loaded (or loading) now, with each child's process and memory.

        Example:
            >>> [(c.name, c.state) for c in router.loaded()]  # doctest: +SKIP
            [('chat', 'loaded')]
        """
        children = self._children_by_port()
        found = []
        for entry in self._entries():
            status = entry.get("status") or {}
            state = str(status.get("value", "?"))
            if state not in ("loaded", "loading"):
                continue
            port = _port(status.get("args") or [])
            process = children.get(port) if port is not None else None
            rss = None
            if process is not None:
                with contextlib.suppress(psutil.Error):
                    rss = process.memory_info().rss
            meta = entry.get("meta") or {}
            size = meta.get("size")
            found.append(RouterChild(str(entry.get("id")), state, process.pid if process else None, port, rss,
                                     size if isinstance(size, int) else None))
        return found

    def _entries(self) -> list[dict[str, Any]]:
        reply = self._client()._request_json("GET", "/v1/models")
        data = reply.get("data") if isinstance(reply, dict) else None
        return [entry for entry in data if isinstance(entry, dict)] if isinstance(data, list) else []

    def _states(self) -> dict[str, str]:
        return {str(e.get("id")): str((e.get("status") or {}).get("value", "?")) for e in self._entries()}

    def _children_by_port(self) -> dict[int, psutil.Process]:
        """The router's child processes, by the ``--port`` on their command line."""
        found: dict[int, psutil.Process] = {}
        if self.pid is None:
            return found
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(self.pid).children():
                with contextlib.suppress(psutil.Error):
                    port = _port(child.cmdline())
                    if port is not None:
                        found[port] = child
        return found

    def _wait(self, done: Any, what: str, failed: Any = lambda: False) -> None:
        deadline = time.monotonic() + self._start_timeout
        while not done():
            if failed():
                raise RocmNbError(f"the router gave up waiting for {what}; its log: router.logs()")
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {self._start_timeout:.0f} s for {what}; see router.logs()")
            time.sleep(0.1)

    # -- what notebooks show ----------------------------------------------------------------

    def status(self) -> ServerStatus:
        """The router as a ``%rocm_status`` row (its children: :meth:`children_status`)."""
        server = self._lease.server
        running = server is not None and server.alive
        rss = None
        if running and server is not None and server.pid is not None:
            with contextlib.suppress(psutil.Error):
                rss = psutil.Process(server.pid).memory_info().rss
        names = ", ".join(self._states()) if running else ""
        return ServerStatus(model=f"router: {names or self.folder.name}", file=str(self.folder),
                            backend=self.backend,
                            state={ModelState.NEW: "stopped"}.get(self.state, self.state.value),
                            pid=self.pid, port=server.port if running and server else None,
                            ctx_size=self.config.ctx_size, gpu_layers=self.config.gpu_layers, rss_bytes=rss)

    def children_status(self) -> dict[str, ServerStatus]:
        """One ``%rocm_status`` row per loaded model, by its name."""
        if self.pid is None:
            return {}
        return {child.name: child.status(self.backend) for child in self.loaded()}

    def __repr__(self) -> str:
        return printable(f"<LocalRouter {self.folder} max_loaded={self.config.models_max} state={self.state.value}>")


def _port(argv: Sequence[str]) -> int | None:
    """The value of ``--port`` in a command line, if any.

    Example:
        >>> _port(["llama-server", "--port", "8081", "--alias", "chat"]), _port(["x"])
        (8081, None)
    """
    for flag, value in itertools.pairwise(argv):
        if flag == "--port" and value.isdigit():
            return int(value)
    return None
