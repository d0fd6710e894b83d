"""How much memory a model load needs, and how many layers fit on the GPU.

:func:`estimate` (:mod:`rocm_nb.modelfiles._estimate`, where its formulas and their
measurements are written up) adds up what llama-server allocates for a model,
from the GGUF header alone: weights, KV cache, compute buffer and runtime,
split between GPU memory and host RAM.

:func:`plan` chooses what to ask llama-server for: every layer on the GPU if
that fits the free VRAM less a 1 GiB margin (what llama.cpp's own ``--fit``
keeps), else (when the context size was not chosen by the user) a context
down to 4096, else the largest ``gpu_layers`` that fits. Its ``note`` says
what was decided, in one sentence.

Example:
    >>> from rocm_nb.modelfiles.catalog import read_info, resolve_model
    >>> info = read_info(resolve_model("smollm2-135m"))  # doctest: +SKIP
    >>> plan(info, 8 * 2**30, ctx_size=4096).note  # doctest: +SKIP
    'all 31 layers of ... on the GPU: ... of the 8.0 GiB of free VRAM'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from rocm_nb._units import human_bytes
from rocm_nb.hardware import Backend, Hardware
from rocm_nb.hardware._unified import UnifiedMemory, gpu_budget
from rocm_nb.modelfiles._estimate import (
    CACHE_TYPES,
    DEFAULT_BATCH,
    FLASH_ATTN,
    UBATCH,
    MemoryEstimate,
    ProjectorEstimate,
    check_cache_options,
    checked_shape,
    estimate,
    estimate_projector,
    estimate_shape,
)
from rocm_nb.modelfiles.catalog import ModelInfo
from rocm_nb.modelfiles.projector import ProjectorInfo

__all__ = [
    "CACHE_TYPES",
    "DEFAULT_BATCH",
    "FLASH_ATTN",
    "GPU_MARGIN",
    "MIN_CTX",
    "UBATCH",
    "FitPlan",
    "MemoryEstimate",
    "ProjectorEstimate",
    "check_cache_options",
    "estimate",
    "free_vram",
    "plan",
    "plan_load",
]

GPU_MARGIN = 1 << 30
"""VRAM left free by :func:`plan`: the margin llama.cpp's ``--fit`` keeps per device (1 GiB)."""

MIN_CTX = 4096
"""The smallest context :func:`plan` shrinks to, as llama.cpp's ``--fit`` does."""

@dataclass(frozen=True)
class FitPlan:
    """What :func:`plan` decided: the layers and context to load with, and why.

    ``fits`` is False when even the plan is expected to run out of memory;
    ``note`` is the one-line explanation ``%rocm_load`` prints. ``draft`` is
    the speculative draft model's share (``None`` without one), ``projector``
    the image projector's (``mmproj=``): their memory is taken from the
    budget before the main model's layers are placed.

    Example:
        >>> e = MemoryEstimate(0, 31, 4096, 1, 0, 92 << 20, 0, 90 << 20, 0, 18 << 20, 32 << 20)
        >>> str(FitPlan(0, 4096, e, True, "runs on the CPU"))
        'runs on the CPU'
    """

    gpu_layers: int
    ctx_size: int
    estimate: MemoryEstimate
    fits: bool
    note: str
    draft: MemoryEstimate | None = None
    projector: ProjectorEstimate | None = None

    def __str__(self) -> str:
        return self.note


def plan(
    info: ModelInfo,
    free_vram_bytes: int | None,
    *,
    ctx_size: int,
    parallel: int = 1,
    gpu_layers: int | None = None,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    flash_attn: str | None = None,
    shrink_ctx: bool = False,
    min_ctx: int = MIN_CTX,
    free_ram_bytes: int | None = None,
    margin: int = GPU_MARGIN,
    memory: str = "VRAM",
    draft: MemoryEstimate | None = None,
    ubatch: int = UBATCH,
    pooled: bool = False,
    name: str | None = None,
    projector: ProjectorEstimate | None = None,
) -> FitPlan:
    """Choose ``gpu_layers`` (and, if allowed, a smaller context) that fit the free VRAM.

    With ``gpu_layers=None`` every layer goes to the GPU when that fits in
    ``free_vram_bytes - margin``; otherwise, with ``shrink_ctx``, the context
    is halved down to ``min_ctx`` first; then the largest ``gpu_layers`` that
    fits is chosen. A given ``gpu_layers`` is kept and only checked (``0``
    means a CPU-only load). ``free_vram_bytes=None`` means unknown: all layers
    are offloaded, and the note says so. ``free_ram_bytes``, when given, is
    checked against the part that stays in host memory. ``memory`` names
    what ``free_vram_bytes`` counts in the note (an APU's "carve-out + GTT").
    A ``draft`` model's estimate (speculative decoding) is set aside first:
    its VRAM leaves less for the main model's layers, its RAM counts in the
    check, and the note says how much it takes. An image ``projector``'s
    estimate is set aside the same way. ``ubatch`` and ``pooled`` are
    :func:`estimate`'s (the micro-batch; an embedding or reranking server).
    ``name`` is what the note calls the model (default: the GGUF's own name).

    Example:
        >>> p = plan(info, 6 * 2**30, ctx_size=8192)  # doctest: +SKIP
        >>> p.gpu_layers, p.note  # doctest: +SKIP
        (23, 'only 23 of 33 layers of … fit in the 6.0 GiB of free VRAM …')
    """
    shape = checked_shape(info, ctx_size, parallel, flash_attn, cache_type_k, cache_type_v)
    layers = len(shape.layer_bytes) + 1
    called = name or info.name

    def fitting(ngl: int, ctx: int) -> MemoryEstimate:
        return estimate_shape(shape, ctx_size=ctx, parallel=parallel, gpu_layers=ngl, cache_type_k=cache_type_k,
                              cache_type_v=cache_type_v, flash=flash_attn != "off", ubatch=ubatch, pooled=pooled)

    draft_vram = (0 if draft is None else draft.vram) + (0 if projector is None else projector.vram)
    draft_ram = (0 if draft is None else draft.ram) + (0 if projector is None else projector.ram)
    if free_vram_bytes is not None:
        free_vram_bytes = max(0, free_vram_bytes - draft_vram)
    if free_ram_bytes is not None:
        free_ram_bytes = max(0, free_ram_bytes - draft_ram)
    budget = None if free_vram_bytes is None else free_vram_bytes - margin
    free = "" if free_vram_bytes is None else human_bytes(free_vram_bytes)
    ctx = ctx_size
    if gpu_layers is not None:
        chosen = fitting(gpu_layers, ctx)
        fits = free_vram_bytes is None or chosen.vram <= free_vram_bytes
        if chosen.gpu_layers == 0:
            note = f"{called} runs on the CPU: {chosen.summary()}"
            if free_ram_bytes is not None and chosen.ram <= free_ram_bytes:
                note += f"; {human_bytes(free_ram_bytes)} of RAM is available"
        elif fits:
            note = f"gpu_layers={gpu_layers}: {chosen.summary()}" + (f"; {free} of {memory} is free" if free else "")
        else:
            best = _largest_fit(fitting, layers, ctx, budget or 0)
            note = (f"gpu_layers={gpu_layers} needs about {human_bytes(chosen.vram)} of {memory} but only {free} "
                    f"is free: llama-server will probably run out of memory; gpu_layers={best} would fit")
    elif budget is None:
        chosen = fitting(layers, ctx)
        fits = True
        note = f"free VRAM unknown: offloading all {layers} layers of {called}, {chosen.summary()}"
    else:
        chosen = fitting(layers, ctx)
        while chosen.vram > budget and shrink_ctx and ctx > min_ctx:
            ctx = max(min_ctx, ctx // 2)
            chosen = fitting(layers, ctx)
        fits = True
        if chosen.vram <= budget:
            note = (f"all {layers} layers of {called} on the GPU: "
                    f"{human_bytes(chosen.vram)} of the {free} of free {memory}")
            if ctx != ctx_size:
                note = (f"ctx_size lowered from {ctx_size} to {ctx} so that all {layers} layers of {called} "
                        f"fit on the GPU ({human_bytes(chosen.vram)} of the {free} of free {memory}); pass ctx_size= "
                        "to choose another")
        else:
            whole = chosen.vram
            chosen = fitting(_largest_fit(fitting, layers, ctx, budget), ctx)
            lowered = f" at ctx_size {ctx} (lowered from {ctx_size})" if ctx != ctx_size else ""
            if chosen.gpu_layers == 0:
                note = (f"none of {called}'s layers fit in the {free} of free {memory} (all {layers} need "
                        f"{human_bytes(whole)}, and {human_bytes(margin)} is kept free){lowered}: "
                        "it runs on the CPU, slowly")
            else:
                note = (f"only {chosen.gpu_layers} of {layers} layers of {called} fit in the {free} of free "
                        f"{memory} (all need {human_bytes(whole)}, and {human_bytes(margin)} is kept free){lowered}: "
                        f"gpu_layers={chosen.gpu_layers}, the rest run on the CPU, more slowly; a smaller "
                        "ctx_size or quantisation lets more layers fit")
    if free_ram_bytes is not None and chosen.ram > free_ram_bytes:
        fits = False
        note += (f"; and the {human_bytes(chosen.ram)} it needs in RAM is more than the {human_bytes(free_ram_bytes)} "
                 "available: the load will probably fail; use a smaller quantisation or ctx_size")
    if draft is not None:
        note += f"; set aside first for the draft model: {draft.summary()}"
    if projector is not None:
        note += f"; set aside first for the image projector: {projector.summary()}"
    return FitPlan(gpu_layers=chosen.gpu_layers, ctx_size=ctx, estimate=chosen, fits=fits, note=note, draft=draft,
                   projector=projector)


def _largest_fit(fitting: Callable[[int, int], MemoryEstimate], layers: int, ctx: int, budget: int) -> int:
    """The most layers whose VRAM fits ``budget`` (0 if not even one)."""
    for ngl in range(layers, 0, -1):
        if fitting(ngl, ctx).vram <= budget:
            return ngl
    return 0


def free_vram(hardware: Hardware) -> int | None:
    """Free VRAM in bytes over the GPUs llama-server will use; ``None`` when unknown.

    llama.cpp spreads the layers over all the GPUs it sees, so their free
    memory adds up. The GPUs are those in ``hardware.visible_devices`` (all
    of them when it is ``None``).

    Example:
        >>> from rocm_nb.hardware import GPU
        >>> gpus = (GPU(0, "RX 7900 XTX", "gfx1100", "amd", 24 << 30, 4 << 30, False),
        ...         GPU(1, "Radeon 780M", "gfx1103", "amd", 8 << 30, 1 << 30, True))
        >>> free_vram(Hardware("rocm", gpus, "0", ())) // 2**30
        20
    """
    frees = [g.vram_free for g in hardware.visible_gpus]
    if not frees or None in frees:
        return None
    return sum(f for f in frees if f is not None)


def plan_load(
    info: ModelInfo,
    hardware: Hardware,
    backend: Backend | Literal["rpc"],
    *,
    ctx_size: int,
    parallel: int = 1,
    gpu_layers: int | None = None,
    shrink_ctx: bool = False,
    flash_attn: str | None = None,
    cache_type_k: str | None = None,
    cache_type_v: str | None = None,
    free_ram_bytes: int | None = None,
    unified_memory: UnifiedMemory = "auto",
    draft: ModelInfo | None = None,
    draft_gpu_layers: int | None = None,
    ubatch: int = UBATCH,
    pooled: bool = False,
    name: str | None = None,
    projector: ProjectorInfo | None = None,
) -> FitPlan:
    """:func:`plan` for this machine, as ``LocalModel`` asks it.

    ``backend`` is the llama-server build's (``"rpc"`` when the layers go to
    RPC workers: all of them by default, their memory unknown here). A CPU
    build offloads nothing whatever ``gpu_layers`` says. The free VRAM comes
    from ``hardware`` (:func:`free_vram`), the free RAM from psutil unless
    ``free_ram_bytes`` is given. ``None`` cache types mean the server's
    ``f16``. On an integrated GPU, ``unified_memory`` (see
    :mod:`rocm_nb.hardware._unified`) decides whether its GTT counts beside the
    carve-out; the note then says which memory the plan used and why, and a
    plan whose GTT and host parts together exceed the free RAM does not fit.
    A speculative ``draft`` model is estimated at the same context
    (llama-server gives the draft the main model's context), with
    ``draft_gpu_layers`` of its layers on the GPU (default: all of them, none
    on a CPU build), f16 caches and no runtime of its own (it shares the
    server's process); :func:`plan` sets it aside first. An image
    ``projector`` (:func:`~rocm_nb.modelfiles._estimate.estimate_projector`)
    is set aside too: on the GPU of a GPU build unless ``gpu_layers=0`` (where
    llama-server is told to keep it in RAM), in RAM otherwise. ``ubatch``,
    ``pooled`` and ``name`` are :func:`plan`'s.

    Example:
        >>> p = plan_load(info, Hardware("cpu", (), None, ()), "cpu", ctx_size=8192)  # doctest: +SKIP
        >>> p.note  # doctest: +SKIP
        'SmolLM2 … runs on the CPU: about 326 MiB: weights 92 MiB, KV cache 180 MiB, …'
    """
    if free_ram_bytes is None:
        import psutil

        free_ram_bytes = psutil.virtual_memory().available
    ram = free_ram_bytes

    draft_share = None
    if draft is not None:
        draft_layers = (draft.block_count or 0) + 1 if draft_gpu_layers is None else draft_gpu_layers
        draft_share = replace(estimate(draft, ctx_size=ctx_size, parallel=parallel, flash_attn=flash_attn,
                                       gpu_layers=0 if backend == "cpu" else draft_layers), runtime_ram=0)

    vision = None if projector is None else estimate_projector(
        projector, on_gpu=backend not in ("cpu", "rpc") and gpu_layers != 0, flash_attn=flash_attn)

    def planned(free_vram_bytes: int | None, layers: int | None, shrink: bool = False,
                memory: str = "VRAM") -> FitPlan:
        return plan(info, free_vram_bytes, ctx_size=ctx_size, parallel=parallel, gpu_layers=layers,
                    shrink_ctx=shrink, flash_attn=flash_attn, cache_type_k=cache_type_k or "f16",
                    cache_type_v=cache_type_v or "f16", free_ram_bytes=ram, memory=memory, draft=draft_share,
                    ubatch=ubatch, pooled=pooled, name=name, projector=vision)

    if backend == "cpu":
        return planned(None, 0)
    if backend == "rpc":
        return planned(None, (info.block_count or 0) + 1 if gpu_layers is None else gpu_layers)
    host = estimate(info, ctx_size=ctx_size, parallel=parallel, gpu_layers=(info.block_count or 0) + 1,
                    cache_type_k=cache_type_k or "f16", cache_type_v=cache_type_v or "f16",
                    flash_attn=flash_attn, ubatch=ubatch, pooled=pooled).ram
    budget = gpu_budget(hardware, backend, unified_memory, free_ram=ram, host_bytes=host)
    fit = planned(budget.free, gpu_layers, shrink_ctx, budget.memory)
    if not budget.reason:
        return fit
    note, fits = f"{fit.note}; {budget.reason}", fit.fits
    shared = max(0, fit.estimate.vram - (budget.dedicated or 0)) if budget.unified else 0
    if shared and shared + fit.estimate.ram > ram:
        fits = False
        note += (f"; but the {human_bytes(shared)} of GTT and {human_bytes(fit.estimate.ram)} of RAM it needs "
                 f"are more than the {human_bytes(ram)} of RAM available: the load will probably fail")
    return replace(fit, note=note, fits=fits)
