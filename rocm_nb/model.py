"""``LocalModel``: a llama-server of your own, with the generation API on top.

``LocalModel`` *composes*: it holds a :class:`~rocm_nb._lease.ServerLease`
(a share of a llama-server from a :class:`~rocm_nb.server._registry.ServerRegistry`,
and a :class:`~rocm_nb.client.Client` on it, with an explicit
:class:`ModelState`), and offers the same generation API as ``Client``
(both build on one shared base, :mod:`rocm_nb.client._generation`). Constructing
one checks everything that can be checked before any server starts: the
model resolves (which may download it) and is a valid GGUF, a llama-server
exists, the context size fits the model. The server starts on ``with``,
``start()``, or the first request (off the event loop for async code); no
property starts one (``base_url`` before ``start()`` raises
:class:`~rocm_nb.errors.ModelNotStarted`).

The default registry shares one server between all ``LocalModel`` objects
in the process with an equal configuration: re-running a notebook cell
attaches to the running server instead of loading the model twice. The
server stops when the last ``LocalModel`` using it is closed, or at exit.

Example:
    >>> model = LocalModel("smollm2-135m", ctx_size=2048)  # checked, planned, not started yet
    >>> model.config.argv(1)[7:9], model.pid
    (['-c', '2048'], None)
    >>> with LocalModel("smollm2-135m") as model:  # doctest: +SKIP
    ...     print(model.generate("Once upon a time", max_tokens=24).text)
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal, Unpack

from rocm_nb._callbacks import CloseCallbacks
from rocm_nb._escape import printable
from rocm_nb._exposure import check_extra_args, is_loopback
from rocm_nb._lease import ModelState, OwnServer, ServerLease
from rocm_nb._options import DEFAULT_SPECULATIVE, device_options, plan_server, server_mode
from rocm_nb.binary import ServerBinary, find_server
from rocm_nb.client import Client
from rocm_nb.client._generation import GenerationAPI
from rocm_nb.client.request import Options
from rocm_nb.client.status import ServerStatus
from rocm_nb.errors import (
    ModelClosed,
    ModelNotStarted,
    RocmNbError,
    ServerCrashed,
    describe_exit,
    with_notes,
)
from rocm_nb.hardware import Backend, GpuUsage, Hardware, detect, device_names, forced_backend, gpu_usage
from rocm_nb.hardware._unified import UnifiedMemory
from rocm_nb.modelfiles.catalog import DEFAULT_MODEL, ModelInfo, read_info, resolve_model
from rocm_nb.modelfiles.fit import FitPlan
from rocm_nb.server import LlamaServer, LoadProgress, ServerConfig
from rocm_nb.server._registry import ServerRegistry, default_registry

if TYPE_CHECKING:
    from rocm_nb.notebook.chat import ChatPanel
    from rocm_nb.notebook.monitor import GpuMonitor

__all__ = ["LocalModel", "running_servers"]


def running_servers() -> list[LlamaServer]:
    """The llama-servers this process runs right now (for status displays).

    Example:
        >>> [s.pid for s in running_servers()]  # doctest: +SKIP
        [12345]
    """
    return default_registry.running()


def _binary_for(server: str | os.PathLike[str] | None, hardware: Hardware | None,
                wanted: Backend | None) -> tuple[ServerBinary, Hardware]:
    """The llama-server build to run and the hardware it runs on: this machine's backend, or the one asked for.

    A Vulkan build is found first when Vulkan is asked for, so that its
    ``--list-devices`` can stand in for a missing ``vulkaninfo``. A backend
    asked for that this machine cannot serve is a :class:`ValueError`.
    """
    if wanted == "vulkan" and hardware is None:
        binary = find_server(server, backend="vulkan", strict=True)
        found = detect(backend="vulkan", vulkan_server=binary.path)
    else:
        found = hardware if hardware is not None else detect(backend=wanted)
        binary = find_server(server, backend=found.backend, strict=wanted is not None)
    if wanted is not None and found.backend != wanted:
        raise ValueError(f"backend={wanted!r} was asked for, but this machine has no device for it: "
                         f"{'; '.join(found.notes)}. Next step: `rocm-nb doctor` shows what was found; leave "
                         "backend= out to use this machine's")
    return binary, found


class LocalModel(OwnServer, GenerationAPI):
    """A local llama-server for one model, started for this Python session.

    Args:
        model: a ``.gguf`` path, a catalogue name (default ``smollm2-135m``)
            or ``hf:owner/repo/file.gguf``.
        ctx_size: context length; default min(trained context, 8192).
        gpu_layers: layers to offload; ``None``/``"auto"`` means as many as
            fit in the free VRAM on a GPU backend (lowering the default
            context first, down to 4096, if that lets all of them fit) and 0
            on CPU. :attr:`fit` says what was chosen and why.
        parallel: server slots (concurrent generations).
        server: path to a llama-server binary (else found or built).
        extra_args: further llama-server arguments, passed as they are; ``--host``,
            ``--port``, ``--api-key`` and ``--api-key-file`` are refused
            (:class:`ValueError`), since rocm_nb sets them to keep the server private.
        host: the address llama-server listens on (default ``127.0.0.1``:
            this machine only). Any other address, such as ``"0.0.0.0"``,
            warns (:class:`UserWarning`): every machine that can reach this
            one can use the server with its API key (``model.api_key``).
        env: extra environment for the server only.
        rpc: ``host:port`` of llama.cpp RPC workers (see :func:`~rocm_nb.server.rpc.rpc_worker`) to
            split the model's layers over; all layers are offloaded by default.
        hsa_override: ``HSA_OVERRIDE_GFX_VERSION`` for the server only: ``None``
            (default: none), ``"auto"`` (the version ROCm needs to run a GPU it
            ships no kernels for, such as 10.3.0 for an RX 6600's gfx1032; see
            ``rocm-nb doctor``) or a version such as ``"11.0.0"``. Applying it
            warns (:class:`UserWarning`); one set in your environment or ``env`` wins.
        flash_attn: ``"on"``, ``"off"`` or ``"auto"`` (``True``/``False`` also
            work); ``None`` leaves the server's default, ``auto``.
        cache_type: KV cache type for both K and V, such as ``"q8_0"`` (half
            the memory of the default ``"f16"``); ``cache_type_k`` and
            ``cache_type_v`` set them one by one. A quantised V cache needs
            flash attention.
        unified_memory: on an AMD APU, whether the plan counts GTT (system
            RAM the GPU maps) beside the firmware's carve-out: ``"auto"``
            (default: yes where ROCm 6.4+ or Vulkan can use it), ``"on"`` or
            ``"off"``; ``model.fit.note`` says which memory was used and why.
        speculative: speculative decoding: ``"off"`` (the default, chosen by
            measurement: see docs/speculative.md), ``"ngram"`` (drafts from text the
            conversation already holds; no second model), or a draft model's
            ``.gguf`` path or catalogue name (a smaller model with the same
            vocabulary). The output distribution is the model's either way
            (the server verifies every draft; see docs/speculative.md for greedy text
            over long replies); ``completion.timings.acceptance`` says how
            many drafted tokens were kept.
        draft_gpu_layers: the draft model's layers on the GPU (default: all on
            a GPU backend, none on the CPU); its memory counts in :attr:`fit`.
        backend: ``"rocm"``, ``"cuda"``, ``"vulkan"`` or ``"cpu"`` to choose the
            backend instead of detecting it (``$ROCM_NB_BACKEND`` does the same);
            the llama-server build for it must be installed (``rocm-nb server
            install --backend vulkan``). A software Vulkan device (Mesa's
            lavapipe) is used only this way, with a :class:`UserWarning`: it
            runs on the CPU, slower than the CPU backend (docs/vulkan.md).
        device: the index of the one GPU to use where there are several (its
            HIP, CUDA or Vulkan index, as ``rocm-nb doctor`` lists them).
        gpu_memory: the most GPU memory this model may take, such as
            ``"6GiB"`` or ``"64MiB"`` (room for your other GPU work): the plan
            offloads only the layers that fit in it.
        timeout: longest silence tolerated while reading a stream (s).
        start_timeout: how long loading may take (s).
        embedding, pooling, reranking: an embeddings-only server (``embedding=True``,
            ``pooling`` one of ``none``, ``mean``, ``cls``, ``last``, ``rank``, or the
            model's own) or a reranker (``reranking=True``); see :mod:`rocm_nb.client.embeddings`.
        registry: the :class:`~rocm_nb.server._registry.ServerRegistry` to share
            servers through (default: the process-wide one; tests pass a
            fresh one).

    A load that the memory estimate says will not fit warns
    (:class:`RuntimeWarning`) before any server starts.

    Example:
        >>> model = LocalModel("smollm2-135m", ctx_size=2048)  # doctest: +SKIP
        >>> model.generate("The capital of France is", max_tokens=8).text  # doctest: +SKIP
        ' Paris.'
        >>> model.close()  # doctest: +SKIP
    """

    asks_progress = True  # its own llama-server: prefill progress may always be asked for

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        ctx_size: int | None = None,
        gpu_layers: int | Literal["auto"] | None = None,
        parallel: int = 1,
        server: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = 600.0,
        start_timeout: float = 300.0,
        hardware: Hardware | None = None,
        rpc: Sequence[str] = (),
        hsa_override: str | None = None,
        flash_attn: str | bool | None = None,
        cache_type: str | None = None,
        cache_type_k: str | None = None,
        cache_type_v: str | None = None,
        registry: ServerRegistry[ServerConfig, LlamaServer] | None = None,
        host: str = "127.0.0.1",
        unified_memory: UnifiedMemory = "auto",
        embedding: bool = False,
        pooling: str | None = None,
        reranking: bool = False,
        speculative: str | os.PathLike[str] = DEFAULT_SPECULATIVE,
        draft_gpu_layers: int | None = None,
        backend: Backend | None = None,
        device: int | None = None,
        gpu_memory: int | str | None = None,
    ) -> None:
        extra = check_extra_args(extra_args)  # before anything is resolved, downloaded or started
        if not is_loopback(host):
            warnings.warn(f"llama-server will listen on {host}: every machine that can reach this one can use "
                          "it with its API key (model.api_key); keep host='127.0.0.1' unless you mean that",
                          UserWarning, stacklevel=2)
        self._spec = os.fspath(model)
        self.path = resolve_model(model)
        self.info: ModelInfo = read_info(self.path)
        """GGUF metadata: architecture, parameters, quantisation, context, chat template."""
        self.binary, found = _binary_for(server, hardware, forced_backend(backend))
        self.hardware: Hardware
        self.hardware, cap = device_options(found, self.binary, device, gpu_memory, {**os.environ, **(env or {})})
        plan = plan_server(self.info, self.path, self.binary, self.hardware, ctx_size=ctx_size,
                           gpu_layers=gpu_layers, parallel=parallel, extra_args=extra, env=env, host=host,
                           rpc=rpc, hsa_override=hsa_override, flash_attn=flash_attn, cache_type=cache_type,
                           cache_type_k=cache_type_k, cache_type_v=cache_type_v, unified_memory=unified_memory,
                           speculative=speculative, draft_gpu_layers=draft_gpu_layers, gpu_memory=cap)
        self.fit: FitPlan = plan[0]
        """The memory estimate and the offload decision (``model.fit.note`` says it in one sentence)."""
        self.config: ServerConfig = server_mode(plan[1], embedding=embedding, pooling=pooling, reranking=reranking,
                                                ctx_given=ctx_size is not None)
        if not self.fit.fits:
            warnings.warn(self.fit.note, RuntimeWarning, stacklevel=2)
        self._lease = ServerLease(
            self.config, default_registry if registry is None else registry, start_timeout=start_timeout,
            timeout=timeout, on_failure=self._better_error, closed_error=self._closed_error,
        )
        self._on_close = CloseCallbacks(self.path.name, lambda: self.state is ModelState.CLOSED)

    # -- lifetime ---------------------------------------------------------------------------

    def start(self, progress: LoadProgress | None = None) -> LocalModel:
        """Start the server (or attach to a running one with the same config).

        A server that crashed is replaced by a fresh one. Returns ``self``.
        ``progress(elapsed_seconds, last_log_line)`` is called while loading.
        It blocks while the model loads: async code gets the same from its
        first request (or ``async with``) without blocking its loop.

        Example:
            >>> model = LocalModel().start()  # doctest: +SKIP
        """
        self._lease.start(progress)
        return self

    def close(self) -> None:
        """Stop using the server; it stops when its last user closes. Idempotent.

        Streams that other threads are reading from this model end (with
        :class:`~rocm_nb.errors.ModelClosed`) before the server is signalled.

        Example:
            >>> model.close()  # doctest: +SKIP
        """
        self._lease.close(before=self._on_close.run)  # before the server goes: a monitor stops sampling first

    async def aclose(self) -> None:
        """:meth:`close` for async code: the async connections close on this loop, the server off it.

        Example:
            >>> await model.aclose()  # doctest: +SKIP
        """
        await self._lease.aclose(before=self._on_close.run)

    def add_close_callback(self, fn: Callable[[], object]) -> None:
        """Call ``fn()`` once when this model is closed; at once if it already is.

        As with ``Future.add_done_callback``: what watches the model (a GPU
        monitor) registers here, so the model needs to know nothing of it. A
        callback that raises is reported as a ``RuntimeWarning``; the others
        still run, and the model still closes.

        Example:
            >>> model.add_close_callback(lambda: print("closed"))  # doctest: +SKIP
            >>> model.close()  # doctest: +SKIP
            closed
        """
        self._on_close.add(fn)

    def __enter__(self) -> LocalModel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> LocalModel:
        import asyncio

        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _closed_error(self) -> ModelClosed:
        return ModelClosed(
            f"this LocalModel ({self.path.name}) was closed; create a new one with "
            f"LocalModel({self._spec!r})"
        )

    def _client(self) -> Client:
        return self._lease.client()

    async def _aclient(self) -> Client:
        return await self._lease.aclient()

    @property
    def _server(self) -> LlamaServer | None:
        return self._lease.server

    def _better_error(self, exc: Exception, partial: str) -> RocmNbError | None:
        """A transport failure, explained: this model was closed, or its server died (ServerCrashed)."""
        if self.state is ModelState.CLOSED:
            return ModelClosed(
                f"this LocalModel ({self.path.name}) was closed while a request was running; "
                f"the request was cut off. Create a new one with LocalModel({self._spec!r})"
            )
        server, returncode = self._server, self._lease.exit_status()
        if server is None or returncode is None:
            return None
        what, step = describe_exit(returncode, loading=False)
        return with_notes(ServerCrashed(
            f"llama-server (pid {server.pid}) {what} while serving {self.path.name}",
            returncode=server.returncode,
            log_tail=server.log_tail(40),
            partial=partial,
        ), "The text received so far is in the error's .partial.", f"Last log lines:\n{server.log_tail(15)}",
            "Next step: " + (f"{step}; then " if step else "") + "call model.start() for a fresh server.")

    # -- what notebooks show ----------------------------------------------------------------

    @property
    def state(self) -> ModelState:
        """Where this model is in its life (no I/O: a look at the process).

        Example:
            >>> LocalModel("smollm2-135m").state.value
            'new'
        """
        return self._lease.state

    @property
    def server(self) -> LlamaServer:
        """The :class:`LlamaServer` in use (never starts one).

        Raises :class:`~rocm_nb.errors.ModelNotStarted` before ``start()`` and
        :class:`~rocm_nb.errors.ModelClosed` after ``close()``; after a crash
        it is the server that died.

        Example:
            >>> LocalModel("smollm2-135m").server  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            rocm_nb.errors.ModelNotStarted: SmolLM2-135M-Instruct.Q4_1.gguf has not started...
        """
        if self.state is ModelState.CLOSED:
            raise self._closed_error()
        server = self._server
        if server is None:
            raise ModelNotStarted(
                f"{self.path.name} has not started; call model.start() (or use `with LocalModel(...)`) "
                "first: properties never start a server"
            )
        return server

    @property
    def backend(self) -> Backend:
        """The backend the server runs on: ``rocm``, ``cuda``, ``vulkan`` or ``cpu``."""
        return self.binary.backend

    def status(self) -> ServerStatus:
        """What ``%rocm_status`` shows: process, backend, memory (measured and estimated), speed.

        On a GPU build the layers offloaded and the GPU memory allocated are
        the server's own report (its log at ``-lv 4``: ``offloaded N/M
        layers``, its buffers per device), beside the plan's estimate.

        Example:
            >>> model.status().state  # doctest: +SKIP
            'running'
        """
        server = self._server
        running = server is not None and server.alive
        report = server.memory_report() if server is not None else None
        gpus = report.gpu_devices if report is not None else ()
        rss = decode_tps = None
        if running and server is not None and server.pid is not None:
            import psutil  # imported here: `import rocm_nb` stays cheap

            with contextlib.suppress(psutil.Error):
                rss = psutil.Process(server.pid).memory_info().rss
            with contextlib.suppress(RocmNbError):
                speed = self.metrics().get("llamacpp:predicted_tokens_seconds")
                decode_tps = speed if speed else None
        return ServerStatus(
            model=self.info.name,
            file=self.path.name,
            backend=self.backend,
            state={ModelState.NEW: "stopped"}.get(self.state, self.state.value),  # new, running, crashed, closed
            pid=server.pid if running and server else None,
            port=server.port if running and server else None,
            uptime_s=time.time() - server.started_at if running and server and server.started_at else None,
            load_s=server.load_seconds if server else None,
            ctx_size=self.config.ctx_size,
            gpu_layers=self.config.gpu_layers,
            rss_bytes=rss,
            estimate_bytes=self.fit.estimate.ram,
            estimate_vram_bytes=self.fit.estimate.vram,
            offloaded_layers=report.offloaded_layers if report is not None and gpus else None,
            layers=report.layers if report is not None and gpus else None,
            vram_bytes=report.vram_bytes if report is not None and gpus else None,
            projected_vram_bytes=report.projected_vram_bytes if report is not None else None,
            vram_total_bytes=sum(g.vram_total or 0 for g in self.hardware.visible_gpus) or None,
            decode_tps=decode_tps,
            rpc=self.config.rpc,
            error=(f"llama-server {describe_exit(server.returncode, loading=False)[0]}"
                   if self.state is ModelState.CRASHED and server is not None else None),
        )

    def gpu_usage(self) -> list[GpuUsage]:
        """Each GPU's memory now, as :func:`~rocm_nb.hardware.gpu_usage` reads it; where it can read none (a
        Vulkan device without sysfs, such as lavapipe), what this model's server reported allocating there.

        Example:
            >>> [(u.name, u.vram_used, u.source) for u in model.gpu_usage()]  # doctest: +SKIP
            [('llvmpipe (LLVM 15.0.6, 256 bits)', 133431787, "this model's buffers (llama-server's report); ...")]
        """
        usage = gpu_usage(self.hardware)
        server = self._server
        if server is None or not server.alive:
            return usage
        allocated = {device.device: device.total for device in server.memory_report().gpu_devices}
        by_gpu = {gpu.index: allocated[name] for name, gpu in device_names(self.hardware).items() if name in allocated}
        return [replace(u, vram_used=by_gpu[u.index], source="this model's buffers (llama-server's report)"
                        + (f"; {u.source}" if u.source else "")) if u.vram_used is None and u.index in by_gpu else u
                for u in usage]

    def monitor(
        self,
        interval: float = 1.0,
        *,
        idle_interval: float = 5.0,
        gpus: Callable[[], Sequence[GpuUsage]] | None = None,
    ) -> GpuMonitor:
        """A live widget: per GPU VRAM used/total and busy %, and the server process's memory and CPU.

        It samples every ``interval`` seconds while the server is decoding and
        every ``idle_interval`` seconds otherwise, only while it is visible,
        and stops when closed or when this model is closed (see
        :mod:`rocm_nb.notebook.monitor`). ``gpus`` replaces the GPU sampler (tests).
        anywidget and ipywidgets are imported here, not with rocm_nb.

        Example:
            >>> model.monitor(interval=0.5)  # doctest: +SKIP
        """
        from rocm_nb.notebook.monitor import GpuMonitor

        if self.state is ModelState.CLOSED:
            raise self._closed_error()
        return GpuMonitor(self, interval=interval, idle_interval=idle_interval,
                          gpus=gpus if gpus is not None else self.gpu_usage)

    def panel(self, *, system: str = "", show_probs: bool = False, **options: Unpack[Options]) -> ChatPanel:
        """A chat panel (ipywidgets) on this model: history, Send, Stop, Clear, stats; ``show_probs`` shades tokens.

        ``model.panel(...)`` is ``ChatPanel(model, ...)``: a lazy factory in
        the manner of pandas' ``DataFrame.plot``, as :meth:`monitor` is for
        the GPU monitor (ipywidgets is imported here, not with rocm_nb). For
        a server you :func:`~rocm_nb.client.connect` to, use
        ``ChatPanel(client)`` from :mod:`rocm_nb.notebook.chat`.

        Example:
            >>> model.panel(system="You are a helpful assistant.", temperature=0.3)  # doctest: +SKIP
        """
        from rocm_nb.notebook.chat import ChatPanel

        return ChatPanel(self, system=system, show_probs=show_probs, **options)

    @property
    def label(self) -> str:
        """What a display calls this model: its file and backend.

        Example:
            >>> LocalModel("smollm2-135m").label  # doctest: +ELLIPSIS
            '... · backend ...'
        """
        return f"{self.path.name} · backend {self.backend}"

    def logs(self, n: int | None = None) -> list[str]:
        """The server's last ``n`` log lines (all kept lines by default).

        Example:
            >>> print("\\n".join(model.logs(5)))  # doctest: +SKIP
        """
        return [] if self._server is None else self._server.logs(n)

    def __repr__(self) -> str:
        """The model, its configuration and its :class:`ModelState`.

        Example:
            >>> LocalModel("smollm2-135m", ctx_size=2048)  # doctest: +ELLIPSIS
            <LocalModel SmolLM2-135M-Instruct.Q4_1.gguf backend=... ctx=2048 ngl=... state=new>
        """
        state = self.state
        server = self._server
        where = f" pid={server.pid} {server.base_url}" if state is ModelState.RUNNING and server else ""
        return printable(  # the file's name is anyone's: no escape sequence reaches a terminal
            f"<LocalModel {self.path.name} backend={self.backend} ctx={self.config.ctx_size} "
            f"ngl={self.config.gpu_layers} state={state.value}{where}>"
        )
