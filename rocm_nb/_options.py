"""What ``LocalModel``'s constructor options mean: one :class:`LoadOptions`, its fit plan and its server.

``LocalModel(...)`` takes flat, user-facing keywords (``gpu_layers="auto"``,
``flash_attn=True``, one ``cache_type`` for K and V, a context size that may
be left out); :meth:`LoadOptions.of` checks them and builds one frozen
:class:`LoadOptions`, and :func:`plan_server` turns it into the fit plan
(:func:`rocm_nb.modelfiles.fit.plan_load`) and the
:class:`~rocm_nb.server.ServerConfig` that decides which server runs.

Everything that changes the server's memory is decided here, *before* the
plan, so that the plan is made for the server that starts:

* the context and its slots (``ctx_size``, ``parallel``), the KV cache
  (``cache_type*``, ``flash_attn``), the layers (``gpu_layers``), the batch
  sizes (``batch_size``, ``ubatch_size``) and the mode (``embedding``,
  ``pooling``, ``reranking``: such a server gives each slot the model's whole
  default context unless ``ctx_size`` is given, and computes an input in one
  micro-batch, so both batch sizes are a slot's context);
* the build and the devices (``backend``, ``device``: :func:`choose_machine`
  picks them, and warns about a software Vulkan device) and the GPU memory
  the plan may give the model (``gpu_memory``, a cap under what is free);
* raw ``extra_args`` (and ``LLAMA_ARG_*`` variables in ``env``) that would
  change any of that are refused with a ``ValueError`` naming the keyword to
  use instead (:data:`MEMORY_FLAGS`), so nothing reaches llama-server that the
  plan did not count. Flags that change only speed, sampling defaults or logs
  (``-t``, ``--top-k``, ``-lv``…) pass as they are. The prompt cache in host
  RAM (``--cache-ram``) is outside the estimate either way
  (:mod:`rocm_nb.modelfiles._estimate`), so it passes too.
* ``--slot-save-path`` is refused too, pointing to ``warm_cache=``: it changes
  no memory, but the folder of saved slots is rocm_nb's (private, within a
  disk budget, every file checked before a restore:
  :mod:`rocm_nb.server.warm`), and a second folder given raw would let
  llama-server read and write files rocm_nb never checked.

Adding a load option (as ``device=`` and ``gpu_memory=`` were) takes four steps: a field
of :class:`LoadOptions` with its default, its check in
:meth:`LoadOptions.__post_init__` (or its normalising in :meth:`LoadOptions.of`),
its use in :func:`plan_server` (the plan, the server's command line or
both), and the keyword on ``LocalModel`` (and ``%rocm_load`` if it changes
memory); if a raw flag says the same thing, point its :data:`MEMORY_FLAGS`
entry at the new keyword.

Speculative decoding (``speculative=``). llama-server can decode several tokens per step by *speculation*: something
cheap drafts the next few tokens, and the model checks them all in one batch,
keeping the longest prefix it agrees with and its own next token. Each kept
token is the token the model itself chose (greedy) or sampled (the server
verifies drafts with the request's sampler), so speculation changes the
speed, not the output's distribution. Greedy text is identical with and
without it on ``tests/test_speculative.py``'s prompts for every mode; over
long replies it can differ after a near-tie, because a batch of tokens is
computed with slightly different rounding than one token at a time
(``benchmarks/README.md`` counts how often).

``speculative=`` takes:

* ``"off"``: no speculation (llama-server's own default).
* ``"ngram"``: drafts from n-grams the conversation has already seen
  (:data:`NGRAM_FLAGS`), with no second model. It pays when the output repeats
  what came before (a code block rewritten with one change, a list given again
  as JSON); ``benchmarks/README.md`` has the measurements per workload and
  why this type and these sizes were chosen.
* a draft model: a ``.gguf`` path or catalogue name of a smaller model with the
  same vocabulary (``--spec-draft-model``), with ``draft_gpu_layers`` of its
  layers on the GPU (default: all on a GPU backend, none on the CPU). Its
  memory is counted in ``model.fit``.

The default is :data:`DEFAULT_SPECULATIVE`; docs/speculative.md says why.

Example:
    >>> options = LoadOptions.of(flash_attn=True, cache_type="q8_0", parallel=2)
    >>> options.flash_attn, options.cache_type_k, options.cache_type_v
    ('on', 'q8_0', 'q8_0')
    >>> LoadOptions.of(extra_args=["--cache-type-k", "q8_0"])
    Traceback (most recent call last):
    ...
    ValueError: extra_args may not contain --cache-type-k: it changes the server's memory, which rocm_nb plans \
before it starts; use cache_type_k= instead (cache_type= sets K and V together)
    >>> speculation_flags("ngram", None, None)
    ('--spec-type', 'ngram-mod')
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rocm_nb._exposure import check_env, check_extra_args
from rocm_nb._paths import warm_root
from rocm_nb._units import human_bytes, parse_bytes, positive_int
from rocm_nb.binary import ServerBinary, find_server
from rocm_nb.hardware import Backend, Hardware, detect, forced_backend, select_device
from rocm_nb.hardware._hsa import VISIBILITY_ENV, server_env
from rocm_nb.hardware._unified import UnifiedMemory, check_unified, decide
from rocm_nb.modelfiles.catalog import ModelInfo, read_info, resolve_model
from rocm_nb.modelfiles.fit import CACHE_TYPES, DEFAULT_BATCH, FLASH_ATTN, UBATCH, FitPlan, plan_load
from rocm_nb.modelfiles.projector import read_projector, resolve_projector
from rocm_nb.server import ServerConfig

__all__ = [
    "DEFAULT_CTX_CAP",
    "DEFAULT_SPECULATIVE",
    "MAX_PARALLEL",
    "MEMORY_FLAGS",
    "NGRAM_FLAGS",
    "POOLINGS",
    "REPORT_VERBOSITY",
    "SPECULATIVE_MODES",
    "LoadOptions",
    "choose_machine",
    "context_size",
    "devices_for",
    "draft_spec",
    "plan_server",
    "speculation_flags",
]

DEFAULT_CTX_CAP = 8192
"""Default context size cap: min(trained context, 8192) keeps the KV cache modest."""

REPORT_VERBOSITY = 4
"""``-lv`` for servers on a GPU build: the level at which llama-server logs its offloaded layers and its buffers
per device (what ``model.status()`` and the monitor read; :mod:`rocm_nb.binary._report`)."""

MAX_PARALLEL = 256
"""The most slots a llama-server takes: llama.cpp's ``LLAMA_MAX_SEQ`` (``src/llama-cparams.h``).

Measured with the pinned build: ``--parallel 256`` loads, 257 fails to
create its context, and 100000 aborts (SIGABRT) before it loads anything.
"""


def choose_machine(server: str | os.PathLike[str] | None, hardware: Hardware | None, options: LoadOptions,
                   environ: Mapping[str, str] | None = None) -> tuple[ServerBinary, Hardware]:
    """The llama-server build to run and the hardware it runs on, as ``options`` ask (before the plan is made).

    ``options.backend`` (else ``$ROCM_NB_BACKEND``, else this machine's
    backend) picks the build: a Vulkan build is found first when Vulkan is
    asked for, so that its ``--list-devices`` can stand in for a missing
    ``vulkaninfo``; a backend asked for that this machine cannot serve is a
    :class:`ValueError`. The devices are then :func:`devices_for`'s.
    ``hardware`` (default: :func:`~rocm_nb.hardware.detect`) and ``environ``
    (default ``os.environ``) are seams for tests.

    Example:
        >>> cpu_only = Hardware("cpu", (), None, ("no GPU found",))
        >>> choose_machine(None, cpu_only, LoadOptions.of(backend="rocm"), {})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: backend='rocm' was asked for, but this machine has no device for it: no GPU found. Next step: ...
    """
    env = {**(os.environ if environ is None else environ), **dict(options.env)}
    wanted = forced_backend(options.backend, env)
    vulkan = find_server(server, backend="vulkan", strict=True) if wanted == "vulkan" and hardware is None else None
    found = hardware if hardware is not None else detect(backend=wanted,
                                                         vulkan_server=None if vulkan is None else vulkan.path)
    if wanted is not None and found.backend != wanted:
        raise ValueError(f"backend={wanted!r} was asked for, but this machine has no device for it: "
                         f"{'; '.join(found.notes)}. Next step: `rocm-nb doctor` shows what was found; leave "
                         "backend= out to use this machine's")
    binary = vulkan or find_server(server, backend=found.backend, strict=wanted is not None)
    return binary, devices_for(found, binary, options, env)


def devices_for(hardware: Hardware, binary: ServerBinary, options: LoadOptions,
                environ: Mapping[str, str]) -> Hardware:
    """``hardware`` as llama-server will use it: only GPU ``options.device``, if given.

    Refuses a ``device`` that the visibility variable in ``environ`` (your
    environment and ``env=``) contradicts. Warns (:class:`UserWarning`, at
    the line that made the ``LocalModel``) when the devices include a
    software Vulkan device (it runs on the CPU, slower than the CPU backend)
    and when ``gpu_memory`` cannot apply (a CPU build).

    Example:
        >>> from rocm_nb.hardware import GPU
        >>> lavapipe = GPU(0, "llvmpipe (LLVM 15.0.6, 256 bits)", "", "mesa", 2**31, 0, False, vulkan_type="software")
        >>> hw = Hardware("vulkan", (lavapipe,), "0", ())
        >>> binary = ServerBinary(Path("llama-server"), "1", "vulkan", "cache", False)
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     chosen = devices_for(hw, binary, LoadOptions.of(device=0, gpu_memory="64MiB"), {})
        >>> chosen.visible_devices, str(caught[0].message)[:60]
        ('0', 'Vulkan device 0, llvmpipe (LLVM 15.0.6, 256 bits), is a soft')
    """
    if options.gpu_memory is not None and binary.backend == "cpu":
        warnings.warn(f"gpu_memory={human_bytes(options.gpu_memory)} has no effect: {binary.path} is a CPU build, "
                      "so nothing goes to a GPU", UserWarning, stacklevel=4)
    chosen = select_device(hardware, options.device)
    if options.device is not None:
        for name in VISIBILITY_ENV.get(hardware.backend, ()):
            if name in environ and environ[name] != str(options.device):
                raise ValueError(f"device={options.device} contradicts {name}={environ[name]} in your environment: "
                                 "drop one of them (that variable already picks the GPUs llama-server sees)")
    if binary.backend == "vulkan" and hardware.backend == "vulkan":
        for gpu in chosen.visible_gpus:
            if gpu.device_type == "software":
                warnings.warn(f"Vulkan device {gpu.index}, {gpu.name}, is a software device (Mesa's lavapipe runs "
                              "Vulkan on the CPU): expect about a second per token, slower than the CPU backend; it "
                              "proves the GPU path, it does not speed anything up", UserWarning, stacklevel=4)
    return chosen


SPECULATIVE_MODES = ("off", "ngram")
"""The modes named by a word; anything else given to ``speculative=`` is a draft model."""

DEFAULT_SPECULATIVE = "off"
"""``LocalModel``'s default, chosen by measurement (``benchmarks/README.md``, "Speculative decoding")."""

NGRAM_FLAGS: tuple[str, ...] = ("--spec-type", "ngram-mod")
"""What ``speculative="ngram"`` adds to llama-server's command line: the n-gram type that measured best."""

POOLINGS = ("none", "mean", "cls", "last", "rank")
"""llama-server's ``--pooling`` choices; ``None`` keeps the model's own."""

_UNPLANNED = "rocm_nb's memory plan has no room for it; run llama-server yourself and use rocm_nb.connect()"
_MEMORY = (  # (llama-server's flags, the LLAMA_ARG_ variables that say the same, what to use instead)
    (("-c", "--ctx-size"), ("CTX_SIZE",), "ctx_size="),
    (("-np", "--parallel"), ("N_PARALLEL",), "parallel="),
    (("-ngl", "--gpu-layers", "--n-gpu-layers"), ("N_GPU_LAYERS",), "gpu_layers="),
    (("-ctk", "--cache-type-k"), ("CACHE_TYPE_K",), "cache_type_k= (cache_type= sets K and V together)"),
    (("-ctv", "--cache-type-v"), ("CACHE_TYPE_V",), "cache_type_v= (cache_type= sets K and V together)"),
    (("-fa", "--flash-attn"), ("FLASH_ATTN",), "flash_attn="),
    (("-b", "--batch-size"), ("BATCH",), "batch_size="),
    (("-ub", "--ubatch-size"), ("UBATCH",), "ubatch_size="),
    (("--embedding", "--embeddings"), ("EMBEDDINGS",), "embedding=True"),
    (("--pooling",), ("POOLING",), "pooling="),
    (("--rerank", "--reranking"), ("RERANKING",), "reranking=True"),
    (("--rpc",), (), "rpc="),
    (("--spec-type", "--spec-default", "--spec-draft-model", "-md", "--model-draft"), (), "speculative="),
    (("--spec-draft-ngl", "-ngld", "--gpu-layers-draft", "--n-gpu-layers-draft"), ("N_GPU_LAYERS_DRAFT",),
     "draft_gpu_layers="),
    (("-m", "--model", "-mu", "--model-url", "-hf", "-hfr", "--hf-repo", "-hff", "--hf-file", "--models-dir",
      "--models-max", "--models-preset"), ("MODEL", "MODEL_URL", "MODELS_DIR", "MODELS_MAX", "MODELS_PRESET"),
     "LocalModel's model argument (LocalRouter for many models)"),
    (("-kvu", "--kv-unified", "-no-kvu", "--no-kv-unified", "--kv-unified-per-slot", "--swa-full"),
     ("KV_UNIFIED", "KV_UNIFIED_PER_SLOT", "SWA_FULL"),
     "ctx_size= and parallel= (the plan gives each slot a KV cache of its own, ctx_size / parallel cells: "
     "llama-server's default)"),
    (("-kvo", "--kv-offload", "-nkvo", "--no-kv-offload", "-ot", "--override-tensor", "-cmoe", "--cpu-moe",
      "-ncmoe", "--n-cpu-moe", "-ncffn", "--n-cpu-ffn"),
     ("KV_OFFLOAD", "OVERRIDE_TENSOR", "CPU_MOE", "N_CPU_MOE", "N_CPU_FFN"),
     "gpu_layers= (the plan keeps whole layers, with their KV cache, on the GPU or on the CPU)"),
    (("-dev", "--device", "-mg", "--main-gpu"), ("DEVICE", "MAIN_GPU"),
     "device= (the one GPU to use, by the index `rocm-nb doctor` gives it; the plan counts that GPU's memory)"),
    (("-sm", "--split-mode", "-ts", "--tensor-split"), ("SPLIT_MODE", "TENSOR_SPLIT"),
     "device= (one GPU; without it the plan spreads the layers over every GPU it sees)"),
    (("--spec-draft-type-k", "-ctkd", "--cache-type-k-draft", "--spec-draft-type-v", "-ctvd",
      "--cache-type-v-draft", "--spec-draft-device", "-devd", "--device-draft", "--spec-draft-override-tensor",
      "-otd", "--override-tensor-draft", "--spec-draft-cpu-moe", "-cmoed", "--cpu-moe-draft",
      "--spec-draft-n-cpu-moe", "--spec-draft-ncmoe", "-ncmoed", "--n-cpu-moe-draft"),
     ("SPEC_DRAFT_CACHE_TYPE_K", "SPEC_DRAFT_CACHE_TYPE_V", "SPEC_DRAFT_CPU_MOE", "SPEC_DRAFT_N_CPU_MOE"),
     "speculative= and draft_gpu_layers= (the plan gives the draft f16 caches and whole layers)"),
    (("-fit", "--fit", "-fitt", "--fit-target", "-fitc", "--fit-ctx"), ("FIT", "FIT_TARGET", "FIT_CTX"),
     "ctx_size=, gpu_layers= or gpu_memory= (rocm_nb plans the fit itself: model.fit says what it chose)"),
    (("-mm", "--mmproj", "-mmu", "--mmproj-url", "--mmproj-auto", "--no-mmproj"), ("MMPROJ", "MMPROJ_URL",
     "MMPROJ_AUTO"), "mmproj= (the plan counts the projector, and images are checked before any request)"),
    (("--mmproj-offload", "--no-mmproj-offload"), ("MMPROJ_OFFLOAD",),
     "gpu_layers= (the projector goes where the layers go: on the GPU unless gpu_layers=0)"),
    (("--lora", "--lora-scaled", "--control-vector", "--control-vector-scaled"), (), _UNPLANNED),
)

MEMORY_FLAGS: dict[str, str] = {flag: instead for flags, _, instead in _MEMORY for flag in flags}
"""llama-server flags that change its memory, and what to pass ``LocalModel`` instead (``extra_args`` refuses them)."""

_MEMORY_ENV: dict[str, str] = {f"LLAMA_ARG_{name}": instead for _, names, instead in _MEMORY for name in names}


def check_memory_args(extra_args: Sequence[str], env: Sequence[str] = ()) -> None:
    """A ``ValueError`` naming the keyword to use if ``extra_args`` or ``env`` would change the server's memory.

    Flags are compared as llama-server reads them (``--ctx_size`` is
    ``--ctx-size``), with or without ``=value``.

    Example:
        >>> check_memory_args(["-t", "4", "-lv", "4"])
        >>> check_memory_args([], ["LLAMA_ARG_CTX_SIZE"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: env may not set LLAMA_ARG_CTX_SIZE: it changes the server's memory, ...; use ctx_size= instead
    """
    said = [(f"extra_args may not contain {flag}", MEMORY_FLAGS.get(flag)) for flag in _flags(extra_args)]
    said += [(f"env may not set {name}", _MEMORY_ENV.get(name)) for name in env]
    for what, instead in said:
        if instead is not None:
            keyword, _, why = instead.partition(" (")
            advice = instead if instead == _UNPLANNED else f"use {keyword} instead" + (f" ({why}" if why else "")
            raise ValueError(f"{what}: it changes the server's memory, which rocm_nb plans before it starts; {advice}")


def _flags(extra_args: Sequence[str]) -> list[str]:
    """The flags of ``extra_args`` as llama-server reads them: without ``=value``, ``--ctx_size`` as ``--ctx-size``."""
    flags = (arg.split("=", 1)[0] for arg in map(str, extra_args))
    return [flag.replace("_", "-") if flag.startswith("--") else flag for flag in flags]


def _whole(name: str, value: int | None, *, least: int = 1) -> int | None:
    """``value`` if it is ``None`` or an ``int`` (not a ``bool``) ≥ ``least``, else a ``ValueError`` naming ``name``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
        raise ValueError(f"{name} must be an integer ≥ {least} (or None for the default), got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class LoadOptions:
    """How ``LocalModel`` loads and serves its model: every constructor option that is not a seam, checked.

    Built once by :meth:`of` from ``LocalModel``'s keywords (which are
    documented there) and handed to :func:`plan_server`. Frozen and
    hashable; ``None`` leaves a choice to the plan (``ctx_size``,
    ``gpu_layers``, the batch sizes) or to the server's default
    (``flash_attn``, the cache types: ``auto`` and ``f16``). The module
    docstring says how to add a field.

    Example:
        >>> LoadOptions(parallel=0)
        Traceback (most recent call last):
        ...
        ValueError: parallel must be a positive integer, got 0
        >>> LoadOptions(embedding=True, parallel=4).pooled
        True
    """

    ctx_size: int | None = None
    parallel: int = 1
    gpu_layers: int | None = None
    flash_attn: str | None = None
    cache_type_k: str | None = None
    cache_type_v: str | None = None
    batch_size: int | None = None
    ubatch_size: int | None = None
    embedding: bool = False
    pooling: str | None = None
    reranking: bool = False
    unified_memory: UnifiedMemory = "auto"
    speculative: str | os.PathLike[str] = DEFAULT_SPECULATIVE
    draft_gpu_layers: int | None = None
    mmproj: str | None = None
    """The image projector: a ``mmproj-….gguf`` path, ``hf:`` reference or catalogue name (its projector)."""
    backend: Backend | None = None
    """The backend asked for (:func:`choose_machine`); ``None``: ``$ROCM_NB_BACKEND``, else this machine's."""
    device: int | None = None
    """The one GPU to use, by its HIP, CUDA or Vulkan index; ``None``: every GPU the backend sees."""
    gpu_memory: int | None = None
    """The most GPU memory (bytes) the plan may give this model, whatever is free; ``None``: what is free."""
    rpc: tuple[str, ...] = ()
    hsa_override: str | None = None
    host: str = "127.0.0.1"
    extra_args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    warm_cache: bool = True
    """Keep each slot's prompt cache across restarts (:mod:`rocm_nb.server.warm`; never for a pooled server)."""

    def __post_init__(self) -> None:
        _whole("ctx_size", self.ctx_size)
        if positive_int("parallel", self.parallel) > MAX_PARALLEL:
            raise ValueError(f"parallel={self.parallel} is more slots than llama-server has ({MAX_PARALLEL}, "
                             "llama.cpp's LLAMA_MAX_SEQ); use at most that many")
        _whole("gpu_layers", self.gpu_layers, least=0)
        _whole("batch_size", self.batch_size)
        _whole("ubatch_size", self.ubatch_size)
        _whole("draft_gpu_layers", self.draft_gpu_layers, least=0)
        _whole("device", self.device, least=0)
        _whole("gpu_memory", self.gpu_memory)
        forced_backend(self.backend, {})
        if self.gpu_memory is not None and self.gpu_layers is not None:
            raise ValueError(f"give gpu_layers= or gpu_memory=, not both: gpu_memory={human_bytes(self.gpu_memory)} "
                             f"decides how many layers fit, gpu_layers={self.gpu_layers} fixes them")
        if self.backend == "cpu" and (self.device is not None or self.gpu_memory is not None):
            raise ValueError("device= and gpu_memory= choose and cap a GPU, but backend='cpu' uses none: leave them "
                             "out, or pick a GPU backend")
        if self.flash_attn is not None and self.flash_attn not in FLASH_ATTN:
            raise ValueError(f"flash_attn={self.flash_attn!r} is not one of {', '.join(map(repr, FLASH_ATTN))}, "
                             "True or False (or None for the server's default, 'auto')")
        for which, value in (("k", self.cache_type_k), ("v", self.cache_type_v)):
            if value is not None and value not in CACHE_TYPES:
                raise ValueError(f"cache_type_{which}={value!r} is not a KV cache type llama-server knows; "
                                 f"use one of {', '.join(CACHE_TYPES)}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)} (or None for the model's own), "
                             f"got {self.pooling!r}")
        if self.embedding and self.reranking:
            raise ValueError("a server does embeddings or reranking, not both: use two LocalModels")
        if self.pooling is not None and not self.embedding:
            raise ValueError("pooling= applies to embedding servers: add embedding=True")
        check_unified(self.unified_memory)
        if self.mmproj is not None and not self.mmproj:
            raise ValueError("mmproj= takes a projector's .gguf path, hf: reference or catalogue name, or None; got ''")
        if draft_spec(self.speculative) is None and self.draft_gpu_layers is not None:
            raise ValueError("draft_gpu_layers needs a draft model: pass speculative='path/to/draft.gguf' "
                             "(or a catalogue name)")
        check_extra_args(self.extra_args)
        check_env(name for name, _ in self.env)
        check_memory_args(self.extra_args, [name for name, _ in self.env])
        if not isinstance(self.warm_cache, bool):
            raise ValueError(f"warm_cache must be True or False, got {self.warm_cache!r}")
        if "--slot-save-path" in _flags(self.extra_args):
            raise ValueError("extra_args may not contain --slot-save-path: rocm_nb keeps the prompt cache in a "
                             "private folder of its own (ROCM_NB_WARM_DIR); turn it off with warm_cache=False")

    @classmethod
    def of(
        cls,
        *,
        ctx_size: int | None = None,
        gpu_layers: int | Literal["auto"] | None = None,
        parallel: int = 1,
        flash_attn: str | bool | None = None,
        cache_type: str | None = None,
        cache_type_k: str | None = None,
        cache_type_v: str | None = None,
        batch_size: int | None = None,
        ubatch_size: int | None = None,
        embedding: bool = False,
        pooling: str | None = None,
        reranking: bool = False,
        unified_memory: UnifiedMemory = "auto",
        speculative: str | os.PathLike[str] = DEFAULT_SPECULATIVE,
        draft_gpu_layers: int | None = None,
        rpc: Sequence[str] = (),
        hsa_override: str | None = None,
        host: str = "127.0.0.1",
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        mmproj: str | os.PathLike[str] | None = None,
        backend: Backend | None = None,
        device: int | None = None,
        gpu_memory: int | str | None = None,
        warm_cache: bool = True,
    ) -> LoadOptions:
        """The options from ``LocalModel``'s keywords, in the form the plan takes.

        ``gpu_layers="auto"`` is ``None`` (the plan's choice);
        ``flash_attn`` ``True``/``False`` is ``"on"``/``"off"``; ``cache_type``
        sets both caches, and giving it with one of the others is a
        ``ValueError``. ``gpu_memory`` may be a size such as ``"64MiB"``
        (:func:`~rocm_nb._units.parse_bytes`); the options hold bytes.

        Example:
            >>> LoadOptions.of(gpu_layers="auto", cache_type_k="q8_0").gpu_layers
            >>> LoadOptions.of(cache_type="f16", cache_type_k="q8_0")
            Traceback (most recent call last):
            ...
            ValueError: give cache_type (both K and V) or cache_type_k/cache_type_v, not both
        """
        if cache_type is not None and (cache_type_k is not None or cache_type_v is not None):
            raise ValueError("give cache_type (both K and V) or cache_type_k/cache_type_v, not both")
        if cache_type is not None:
            cache_type_k = cache_type_v = cache_type
        if gpu_layers == "auto":
            gpu_layers = None
        return cls(
            ctx_size=ctx_size, parallel=parallel, gpu_layers=gpu_layers,
            flash_attn=("on" if flash_attn else "off") if isinstance(flash_attn, bool) else flash_attn,
            cache_type_k=cache_type_k, cache_type_v=cache_type_v, batch_size=batch_size, ubatch_size=ubatch_size,
            embedding=embedding, pooling=pooling, reranking=reranking, unified_memory=unified_memory,
            speculative=speculative, draft_gpu_layers=draft_gpu_layers, rpc=tuple(rpc), hsa_override=hsa_override,
            host=host, extra_args=tuple(map(str, extra_args)), env=tuple(sorted((env or {}).items())),
            mmproj=None if mmproj is None else os.fspath(mmproj), backend=backend, device=device,
            gpu_memory=None if gpu_memory is None else parse_bytes("gpu_memory", gpu_memory), warm_cache=warm_cache,
        )

    @property
    def pooled(self) -> bool:
        """An embedding or reranking server: an input is computed whole, in one micro-batch."""
        return self.embedding or self.reranking


def draft_spec(speculative: str | os.PathLike[str] | None) -> str | os.PathLike[str] | None:
    """The draft model ``speculative`` names, or ``None`` for a mode (``"off"``, ``"ngram"``, ``None``).

    Example:
        >>> draft_spec("ngram"), draft_spec(None), draft_spec("tiny.gguf")
        (None, None, 'tiny.gguf')
        >>> draft_spec("")
        Traceback (most recent call last):
        ...
        ValueError: speculative= takes 'off', 'ngram', or a draft model's .gguf path or catalogue name; got ''
    """
    if speculative is None or (isinstance(speculative, str) and speculative in SPECULATIVE_MODES):
        return None
    if not os.fspath(speculative):
        raise ValueError("speculative= takes 'off', 'ngram', or a draft model's .gguf path or catalogue name; "
                         f"got {speculative!r}")
    return speculative


def speculation_flags(speculative: str | os.PathLike[str] | None, draft: Path | None,
                      draft_gpu_layers: int | None) -> tuple[str, ...]:
    """llama-server's flags for a speculation mode, or for ``draft`` (the resolved draft model's path).

    Example:
        >>> speculation_flags("tiny.gguf", Path("/m/tiny.gguf"), 0)
        ('--spec-type', 'draft-simple', '--spec-draft-model', '/m/tiny.gguf', '--spec-draft-ngl', '0')
    """
    if draft is not None:
        layers = ("--spec-draft-ngl", str(draft_gpu_layers)) if draft_gpu_layers is not None else ()
        return ("--spec-type", "draft-simple", "--spec-draft-model", str(draft), *layers)
    if speculative == "ngram":
        return NGRAM_FLAGS
    return ()


def context_size(info: ModelInfo, options: LoadOptions, name: str | None = None) -> int:
    """The whole context to plan for (all slots): ``ctx_size``, checked, or the default.

    The default is min(trained context, :data:`DEFAULT_CTX_CAP`) for the
    whole server, or that much *per slot* for an embedding or reranking
    server (an input is embedded in one slot). A slot's share beyond what the
    model was trained for is a :class:`ValueError` (``name`` names the model).

    Example:
        >>> info = read_info(resolve_model("minilm"))  # doctest: +SKIP
        >>> context_size(info, LoadOptions(embedding=True, parallel=4))  # doctest: +SKIP
        2048
    """
    trained = info.context_length
    default = min(trained or DEFAULT_CTX_CAP, DEFAULT_CTX_CAP)
    if options.ctx_size is None:
        return default * options.parallel if options.pooled else default
    slot = -(-options.ctx_size // options.parallel)
    if trained is not None and slot > trained:
        per_slot = f" ({slot} per slot over parallel={options.parallel})" if options.parallel > 1 else ""
        raise ValueError(
            f"ctx_size={options.ctx_size}{per_slot} is beyond what {name or info.name} was trained for "
            f"({trained}); use ctx_size={trained * options.parallel} or less (quality collapses past the "
            "trained length)"
        )
    return options.ctx_size


def _batches(options: LoadOptions, ctx: int) -> tuple[int | None, int | None, int]:
    """``(-b, -ub, the micro-batch the server will use)``: a pooled server's are a slot's whole context."""
    slot = max(ctx // options.parallel, 1)
    batch = options.batch_size or (slot if options.pooled else None)
    ubatch = options.ubatch_size or (slot if options.pooled else None)
    return batch, ubatch, min(batch or DEFAULT_BATCH, ubatch or UBATCH)  # llama.cpp: n_ubatch ≤ n_batch


def plan_server(info: ModelInfo, path: Path, binary: ServerBinary, hardware: Hardware, options: LoadOptions,
                *, name: str | None = None) -> tuple[FitPlan, ServerConfig]:
    """The fit plan and the server configuration for ``options`` (``LocalModel``'s; see its docstring).

    ``gpu_layers`` given is used as it is; ``None`` takes the plan's choice.
    The plan is made for the context, slots, caches, batch sizes and mode the
    server is started with (the module docstring), so ``model.fit`` and the
    server agree. The server's environment is what the hardware needs
    (``hsa_override`` included, and on an integrated GPU what
    ``unified_memory`` needs: see :mod:`rocm_nb.hardware._unified`) under
    ``env``, which wins. A draft model (``speculative``) is resolved (which
    may download it) and read here, and its memory goes into the fit plan,
    with ``draft_gpu_layers`` of its layers on the GPU (default: all; none on
    a CPU build, which gets no ``--spec-draft-ngl``). An image projector
    (``mmproj``) is resolved and read here too (a file that is no vision
    projector is an :class:`~rocm_nb.errors.InvalidModel`); the plan counts
    it, and it is loaded with ``--mmproj``, kept off the GPU
    (``--no-mmproj-offload``) when the plan keeps it in RAM. ``name`` is what
    the plan's note calls the model (default: the GGUF's own name).
    ``gpu_memory`` caps the GPU memory the plan gives the model; a GPU
    build's server logs at :data:`REPORT_VERBOSITY`, so that its own report
    of layers and buffers can be read (``model.status()``). With
    ``warm_cache`` (and not pooled) the server keeps its prompt cache in
    :func:`~rocm_nb._paths.warm_root` (``ROCM_NB_WARM_BUDGET`` and ``ROCM_NB_WARM_SAVE_S``, if set, are checked here).

    Example:
        >>> fit, config = plan_server(info, path, binary, detect(), LoadOptions())  # doctest: +SKIP
    """
    named_draft = draft_spec(options.speculative)
    draft_path = None if named_draft is None else resolve_model(named_draft)
    draft_info = None if draft_path is None else read_info(draft_path)
    projector = None if options.mmproj is None else read_projector(resolve_projector(options.mmproj))
    backend = "rpc" if options.rpc else binary.backend
    ctx = context_size(info, options, name)
    batch, ubatch, micro = _batches(options, ctx)
    fit = plan_load(
        info, hardware, backend, unified_memory=options.unified_memory,
        ctx_size=ctx, parallel=options.parallel, gpu_layers=options.gpu_layers,
        shrink_ctx=options.ctx_size is None and not options.pooled,  # a pooled slot needs the context a text needs
        flash_attn=options.flash_attn, cache_type_k=options.cache_type_k, cache_type_v=options.cache_type_v,
        draft=draft_info, draft_gpu_layers=options.draft_gpu_layers, ubatch=micro, pooled=options.pooled,
        name=name, projector=projector, gpu_memory=options.gpu_memory,
    )
    draft_layers = fit.draft.gpu_layers if fit.draft is not None and binary.backend != "cpu" else None
    env = dict(options.env)
    config = ServerConfig(
        binary=binary.path,
        model=path,
        ctx_size=fit.ctx_size,
        gpu_layers=fit.gpu_layers if options.gpu_layers is None else options.gpu_layers,
        parallel=options.parallel,
        extra_args=options.extra_args,
        env=tuple(sorted({
            **decide(hardware, backend, check_unified(options.unified_memory)).env,
            **server_env(hardware, {**os.environ, **env}, hsa_override=options.hsa_override),
            **env,
        }.items())),
        host=options.host,
        rpc=options.rpc,
        flash_attn=options.flash_attn,
        cache_type_k=options.cache_type_k,
        cache_type_v=options.cache_type_v,
        batch_size=batch,
        ubatch_size=ubatch,
        embedding=options.embedding,
        pooling=options.pooling,
        reranking=options.reranking,
        speculative=speculation_flags(options.speculative, draft_path, draft_layers),
        mmproj=None if projector is None else projector.path,
        mmproj_offload=binary.backend == "cpu" or fit.projector is None or fit.projector.on_gpu,
        log_verbosity=None if binary.backend == "cpu" else REPORT_VERBOSITY,
        slot_save_path=_warm_folder(options),
    )
    return fit, config


def _warm_folder(options: LoadOptions) -> Path | None:
    """Where the server keeps its prompt cache, or ``None``: off, or a pooled server (its slots keep nothing)."""
    if not options.warm_cache or options.pooled:
        return None
    from rocm_nb.server._warm_store import budget_from, save_budget  # hashlib and friends: with the first such server

    budget_from(os.environ)  # a bad ROCM_NB_WARM_BUDGET or ROCM_NB_WARM_SAVE_S is said now, not at close
    save_budget(os.environ)
    return warm_root()
