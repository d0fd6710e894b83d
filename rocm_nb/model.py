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

from rocm_nb._escape import printable
from rocm_nb._exposure import is_loopback
from rocm_nb._lease import ModelState, OwnServer
from rocm_nb._options import DEFAULT_SPECULATIVE, LoadOptions, choose_machine, plan_server
from rocm_nb.binary import ServerBinary
from rocm_nb.client._generation import GenerationAPI
from rocm_nb.client.engines import Capabilities
from rocm_nb.client.images import ImageLimit
from rocm_nb.client.request import Options
from rocm_nb.client.status import ServerStatus
from rocm_nb.errors import (
    ImagesNotSupported,
    InvalidModel,
    RocmNbError,
    ServerCrashed,
    describe_exit,
    with_notes,
)
from rocm_nb.hardware import Backend, GpuUsage, Hardware, device_names, gpu_usage
from rocm_nb.hardware._unified import UnifiedMemory
from rocm_nb.modelfiles.catalog import (
    DEFAULT_MODEL,
    ModelInfo,
    default_projector,
    model_name,
    read_info,
    resolve_model,
)
from rocm_nb.modelfiles.fit import FitPlan
from rocm_nb.modelfiles.projector import ProjectorInfo, read_projector
from rocm_nb.server import LlamaServer, ServerConfig
from rocm_nb.server._registry import ServerRegistry, default_registry

if TYPE_CHECKING:
    from rocm_nb.notebook.chat import ChatPanel
    from rocm_nb.notebook.monitor import GpuMonitor
    from rocm_nb.server.warm import WarmStart

__all__ = ["LocalModel", "running_servers"]


def running_servers() -> list[LlamaServer]:
    """The llama-servers this process runs right now (for status displays).

    Example:
        >>> [s.pid for s in running_servers()]  # doctest: +SKIP
        [12345]
    """
    return default_registry.running()


class LocalModel(OwnServer, GenerationAPI):
    """A local llama-server for one model, started for this Python session.

    Args:
        model: a ``.gguf`` path, a catalogue name (default ``smollm2-135m``)
            or ``hf:owner/repo/file.gguf``.
        mmproj: the image projector that makes it a vision model (a
            ``mmproj-….gguf`` path, ``hf:owner/repo/mmproj-….gguf``, or a
            catalogue name for that entry's projector); a catalogue vision
            model (``smolvlm-256m``) brings its own. With one, ``chat()``
            takes images (:mod:`rocm_nb.client.images`); its memory counts in
            :attr:`fit`. A projector made for another model is refused by the
            server while loading (:class:`~rocm_nb.errors.ProjectorMismatch`).
        ctx_size: context length; default min(trained context, 8192).
        gpu_layers: layers to offload; ``None``/``"auto"`` means as many as
            fit in the free VRAM on a GPU backend (lowering the default
            context first, down to 4096, if that lets all of them fit) and 0
            on CPU. :attr:`fit` says what was chosen and why.
        parallel: server slots (concurrent generations).
        server: path to a llama-server binary (else found or built).
        extra_args: further llama-server arguments, passed as they are; ``--host``,
            ``--port``, ``--api-key`` and ``--api-key-file`` are refused
            (:class:`ValueError`), since rocm_nb sets them to keep the server private,
            and so is every flag that changes the server's memory (``-c``,
            ``--cache-type-k``, ``-ub``…: :data:`~rocm_nb._options.MEMORY_FLAGS`), with
            the keyword to use instead, since the memory plan is made before the server starts.
        host: the address llama-server listens on (default ``127.0.0.1``:
            this machine only). Any other address, such as ``"0.0.0.0"``,
            warns (:class:`UserWarning`): every machine that can reach this
            one can use the server with its API key (``model.api_key``).
        env: extra environment for the server only (the ``LLAMA_ARG_*`` variables
            that would change its memory are refused, as in ``extra_args``).
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
        batch_size, ubatch_size: llama-server's logical batch and micro-batch
            (``-b``, ``-ub``; default 2048 and 512, or a slot's whole context on an
            embedding or reranking server). The micro-batch sizes the compute buffer,
            which the plan counts.
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
        warm_cache: keep each slot's prompt cache when the model closes
            normally and restore it when the same model starts again with a
            compatible configuration, so the first answer after a kernel restart
            skips the prompt it already read (default ``True``; see
            :mod:`rocm_nb.server.warm` and :attr:`warm_start`). Never for an
            embedding or reranking server.
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
        batch_size: int | None = None,
        ubatch_size: int | None = None,
        registry: ServerRegistry[ServerConfig, LlamaServer] | None = None,
        host: str = "127.0.0.1",
        unified_memory: UnifiedMemory = "auto",
        embedding: bool = False,
        pooling: str | None = None,
        reranking: bool = False,
        speculative: str | os.PathLike[str] = DEFAULT_SPECULATIVE,
        draft_gpu_layers: int | None = None,
        mmproj: str | os.PathLike[str] | None = None,
        backend: Backend | None = None,
        device: int | None = None,
        gpu_memory: int | str | None = None,
        warm_cache: bool = True,
    ) -> None:
        self.load_options: LoadOptions = LoadOptions.of(  # checked before anything is resolved, downloaded or started
            ctx_size=ctx_size, gpu_layers=gpu_layers, parallel=parallel, flash_attn=flash_attn, cache_type=cache_type,
            cache_type_k=cache_type_k, cache_type_v=cache_type_v, batch_size=batch_size, ubatch_size=ubatch_size,
            embedding=embedding, pooling=pooling, reranking=reranking, unified_memory=unified_memory,
            speculative=speculative, draft_gpu_layers=draft_gpu_layers, rpc=rpc, hsa_override=hsa_override,
            host=host, extra_args=extra_args, env=env, warm_cache=warm_cache,
            mmproj=mmproj if mmproj is not None else default_projector(model),  # a catalogue model brings its own
            backend=backend, device=device, gpu_memory=gpu_memory)
        """The load options, checked: what :func:`~rocm_nb._options.plan_server` planned with."""
        if not is_loopback(host):
            warnings.warn(f"llama-server will listen on {host}: every machine that can reach this one can use "
                          "it with its API key (model.api_key); keep host='127.0.0.1' unless you mean that",
                          UserWarning, stacklevel=2)
        self._spec = os.fspath(model)
        self.path = resolve_model(model)
        self.name: str = model_name(model, self.path)
        """The name this model is known by: the catalogue name given, else the file's stem (``info.name`` is the
        GGUF's own)."""
        self.info: ModelInfo = read_info(self.path)
        """GGUF metadata: architecture, parameters, quantisation, context, chat template."""
        if self.info.architecture == "clip":
            raise InvalidModel(f"{self.path.name} is an image projector, not a model: load the model it belongs to "
                               f"and give this file as mmproj={os.fspath(model)!r}")
        self.binary: ServerBinary
        self.hardware: Hardware
        self.binary, self.hardware = choose_machine(server, hardware, self.load_options)
        self.fit: FitPlan
        """The memory estimate and the offload decision (``model.fit.note`` says it in one sentence)."""
        self.config: ServerConfig
        """The server's configuration: what the plan decided, and the command line it gives."""
        self.fit, self.config = plan_server(self.info, self.path, self.binary, self.hardware, self.load_options,
                                            name=self.name)
        self.projector: ProjectorInfo | None = None if self.config.mmproj is None else read_projector(
            self.config.mmproj)
        """The image projector's GGUF metadata (``mmproj=``), or ``None`` for a model that takes no images."""
        if not self.fit.fits:
            warnings.warn(self.fit.note, RuntimeWarning, stacklevel=2)
        self._what, self._again = f"this LocalModel ({self.name})", f"create a new one with LocalModel({self._spec!r})"
        self._hold(self.config, registry, start_timeout=start_timeout, timeout=timeout)

    def _better_error(self, exc: Exception, partial: str) -> RocmNbError | None:
        """A transport failure, explained: this model was closed, or its server died (ServerCrashed)."""
        closed = super()._better_error(exc, partial)
        if closed is not None:
            return closed
        server, returncode = self._lease.server, self._lease.exit_status()
        if server is None or returncode is None:
            return None
        what, step = describe_exit(returncode, loading=False)
        return with_notes(ServerCrashed(
            f"llama-server (pid {server.pid}) {what} while serving {self.name}",
            returncode=server.returncode,
            log_tail=server.log_tail(40),
            partial=partial,
        ), "The text received so far is in the error's .partial.", f"Last log lines:\n{server.log_tail(15)}",
            "Next step: " + (f"{step}; then " if step else "") + "call model.start() for a fresh server.")

    def _image_limit(self) -> ImageLimit:
        """The projector's image size; without a projector, images are refused here, before any request."""
        if self.projector is None:
            raise ImagesNotSupported(
                f"{self.name} was loaded without an image projector, so it takes no images: load a vision "
                "model with its projector, LocalModel('smolvlm-256m') or LocalModel('model.gguf', "
                "mmproj='mmproj-model.gguf') (%rocm_load MODEL --mmproj FILE), or send text only")
        return ImageLimit(self.projector.max_edge, self.projector.max_pixels)

    # -- what notebooks show ----------------------------------------------------------------

    @property
    def capabilities(self) -> Capabilities:
        """What the running server says it supports; ``.images`` is true when it loaded a projector.

        Asked of the server once (``/props``); like :attr:`server`, raises
        :class:`~rocm_nb.errors.ModelNotStarted` before ``start()``.
        :attr:`projector` says the same without a server.

        Example:
            >>> model.capabilities.images  # doctest: +SKIP
            True
        """
        self.server  # noqa: B018  (raises before start() and after close())
        return self._client().capabilities

    @property
    def backend(self) -> Backend:
        """The backend the server runs on: ``rocm``, ``cuda``, ``vulkan`` or ``cpu``."""
        return self.binary.backend

    @property
    def warm_start(self) -> WarmStart | None:
        """What the server's start restored from the saved prompt cache, proved reused (:mod:`rocm_nb.server.warm`).

        ``None`` before the first start and for a server that keeps no cache
        (``warm_cache=False``, embeddings); ``str()`` of it is the one line
        ``%rocm_load`` shows, such as ``restored 2,803 cached tokens (61 MiB) in 0.08 s``.

        Example:
            >>> print(LocalModel("smollm2-135m").start().warm_start)  # doctest: +SKIP
            restored 2,803 cached tokens (61 MiB) in 0.08 s
        """
        server = self._lease.server
        return None if server is None else server.warm_start

    def status(self) -> ServerStatus:
        """What ``%rocm_status`` shows: process, backend, memory (measured and estimated), speed.

        On a GPU build the layers offloaded and the GPU memory allocated are
        the server's own report (its log at ``-lv 4``: ``offloaded N/M
        layers``, its buffers per device), beside the plan's estimate.

        Example:
            >>> model.status().state  # doctest: +SKIP
            'running'
        """
        server = self._lease.server
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
            model=self.name,
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
            restored_tokens=server.warm_start.tokens if server is not None and server.warm_start else None,
            images=self.projector is not None,
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
        server = self._lease.server
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
        """What a display calls this model: its name and backend.

        Example:
            >>> LocalModel("smollm2-135m").label  # doctest: +ELLIPSIS
            'smollm2-135m · backend ...'
        """
        return f"{self.name} · backend {self.backend}"

    def __repr__(self) -> str:
        """The model, its configuration and its :class:`ModelState`.

        Example:
            >>> LocalModel("smollm2-135m", ctx_size=2048)  # doctest: +ELLIPSIS
            <LocalModel smollm2-135m file=SmolLM2-135M-Instruct.Q4_1.gguf backend=... ctx=2048 ngl=... state=new>
        """
        state = self.state
        server = self._lease.server
        where = f" pid={server.pid} {server.base_url}" if state is ModelState.RUNNING and server else ""
        return printable(  # the file's name is anyone's: no escape sequence reaches a terminal
            f"<LocalModel {self.name} file={self.path.name} backend={self.backend} ctx={self.config.ctx_size} "
            f"ngl={self.config.gpu_layers} state={state.value}{where}>"
        )
