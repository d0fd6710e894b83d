"""Unified memory on AMD APUs: how much an integrated GPU may really allocate, and whether a plan counts GTT.

An APU's "VRAM" (amdgpu's ``mem_info_vram_total``) is only the carve-out
the firmware reserves, often 512 MiB. The GPU maps far more system RAM
through GTT (``mem_info_gtt_total``/``mem_info_gtt_used``): ROCm 6.4 and
later fall back to GTT when ``hipMalloc`` outgrows the carve-out on an APU,
and Vulkan reports carve-out + GTT as its heap (llama.cpp#19818: "ROCm only
sees 6368 MiB (BIOS VRAM) … Vulkan sees 53281 MiB"). Since GTT *is* system
RAM, the GTT a plan may count is capped by the RAM available now, less what
the load needs in host memory.

``unified_memory`` decides:

* ``"auto"`` (default): carve-out + GTT on an APU, unless the ROCm install
  is known to be older than 6.4 (then the carve-out alone, and ``doctor``
  suggests upgrading ROCm or the Vulkan build).
* ``"on"``: carve-out + GTT. With a ROCm older than 6.4 this sets
  ``GGML_CUDA_ENABLE_UNIFIED_MEMORY=1`` for llama-server, which makes the
  pinned llama.cpp allocate with ``hipMallocManaged`` (ggml-cuda.cu,
  ``ggml_cuda_device_malloc``; docs/build.md, "Unified Memory": "share main
  memory between the CPU and integrated GPU"). It is not set on ROCm 6.4
  and later, whose ``hipMalloc`` already reaches GTT, nor on Vulkan.
* ``"off"``: the carve-out alone.

A discrete GPU is never affected: its plan counts its free VRAM as before.
Capping by the free RAM also covers a known gap: ``mem_info_gtt_used`` does
not count ``hipMalloc`` allocations on some stacks (ROCm/legacy-rocm-build#5444),
while the RAM they take does leave the available RAM.

Example:
    >>> from rocm_nb.hardware._types import GPU, Hardware
    >>> halo = GPU(0, "Radeon 8060S", "gfx1151", "amd", 512 << 20, 0, True, None, 128 << 30, 0)
    >>> decide(Hardware("rocm", (halo,), None, ()), "rocm", "auto").use_gtt
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from rocm_nb._units import human_bytes
from rocm_nb.hardware._types import Backend, Hardware
from rocm_nb.hardware._vulkan import MIN_HEADER

__all__ = ["GTT_ROCM", "UNIFIED_ENV", "GpuBudget", "UnifiedDecision", "UnifiedMemory", "check_unified", "decide",
           "gpu_budget"]

UnifiedMemory = Literal["auto", "on", "off"]

GTT_ROCM = (6, 4)
"""The first ROCm whose ``hipMalloc`` falls back to GTT on an APU."""

UNIFIED_ENV = "GGML_CUDA_ENABLE_UNIFIED_MEMORY"
"""llama.cpp's switch to ``hipMallocManaged`` (read with ``getenv`` in the pinned ggml-cuda.cu)."""


def check_unified(value: str) -> UnifiedMemory:
    """``value`` if it is ``"auto"``, ``"on"`` or ``"off"``; else a :class:`ValueError` saying what to pass.

    Example:
        >>> check_unified("on")
        'on'
    """
    if value not in get_args(UnifiedMemory):
        raise ValueError(f"unified_memory={value!r}: use 'auto' (GTT on an integrated GPU where ROCm or Vulkan "
                         "can use it), 'on' or 'off' (the carve-out alone)")
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class UnifiedDecision:
    """Whether a plan counts GTT beside the carve-out, why, and the environment llama-server needs for it."""

    use_gtt: bool
    reason: str
    env: Mapping[str, str] = field(default_factory=dict)


def decide(hardware: Hardware, backend: Backend | Literal["rpc"], unified: UnifiedMemory) -> UnifiedDecision:
    """The unified-memory decision for the integrated GPUs llama-server will use (see the module docstring).

    Example:
        >>> decide(Hardware("cpu", (), None, ()), "cpu", "auto")
        UnifiedDecision(use_gtt=False, reason='', env={})
    """
    apus = [g for g in hardware.apus if g.gtt_total is not None]
    if not apus or backend not in ("rocm", "vulkan"):
        return UnifiedDecision(False, "")
    names = ", ".join(f"{g.name} ({g.arch})" for g in apus)
    rocm = hardware.rocm
    release, first = f"ROCm {rocm.version_text}" if rocm else "ROCm", ".".join(map(str, GTT_ROCM))
    old = backend == "rocm" and rocm is not None and rocm.older_than(GTT_ROCM)
    if unified == "off":
        return UnifiedDecision(False, f"unified_memory='off': {names} is planned on its carve-out alone")
    if old and unified == "auto":
        return UnifiedDecision(False, (
            f"{release} allocates only the carve-out of {names} (GTT needs ROCm {first} or later), so the plan "
            f"uses the carve-out alone; unified_memory='on' tries GTT through {UNIFIED_ENV}=1; or build for Vulkan, "
            f"which maps carve-out + GTT (rocm-nb server install --backend vulkan; needs Vulkan headers "
            f"1.3.{MIN_HEADER} or later)"))
    if backend == "vulkan":
        how = "Vulkan maps carve-out + GTT"
    elif old:
        how = f"{UNIFIED_ENV}=1 lets {release} allocate from GTT"
    elif rocm is not None and rocm.version:
        how = f"{release} allocates beyond the carve-out from GTT"
    else:
        how = f"ROCm {first} and later allocate beyond the carve-out from GTT (the installed version is unknown)"
    return UnifiedDecision(True, f"{names} is integrated: {how}", {UNIFIED_ENV: "1"} if old else {})


@dataclass(frozen=True)
class GpuBudget:
    """What a plan may place on the GPUs: ``free`` bytes (``None``: unknown), of which ``dedicated`` are VRAM.

    ``memory`` names it in notes ("VRAM", or "carve-out + GTT"); ``reason``
    says why (empty for discrete GPUs).

    Example:
        >>> GpuBudget(8 << 30, 8 << 30, "VRAM", "", False).memory
        'VRAM'
    """

    free: int | None
    dedicated: int | None
    memory: str
    reason: str
    unified: bool


def gpu_budget(hardware: Hardware, backend: Backend | Literal["rpc"], unified: UnifiedMemory, *,
               free_ram: int, host_bytes: int = 0) -> GpuBudget:
    """The GPU memory a plan may count on this machine.

    Discrete GPUs: their free VRAM, added up (``None`` if any is unknown).
    Integrated GPUs with GTT in use (:func:`decide`): free carve-out + free
    GTT, the GTT capped by ``free_ram - host_bytes`` (the RAM available now,
    less what the load needs in host memory anyway).

    Example:
        >>> from rocm_nb.hardware._types import GPU
        >>> halo = GPU(0, "Radeon 8060S", "gfx1151", "amd", 512 << 20, 0, True, None, 128 << 30, 0)
        >>> b = gpu_budget(Hardware("rocm", (halo,), None, ()), "rocm", "auto", free_ram=100 << 30)
        >>> b.free // 2**20, b.dedicated // 2**20, b.memory
        (102912, 512, 'carve-out + GTT')
    """
    frees = [g.vram_free for g in hardware.visible_gpus]
    vram = None if not frees or None in frees else sum(f or 0 for f in frees)
    choice = decide(hardware, backend, unified)
    if not choice.use_gtt:
        label = "carve-out" if hardware.apus and choice.reason else "VRAM"
        return GpuBudget(vram, vram, label, choice.reason, False)
    gtt = sum(g.gtt_free or 0 for g in hardware.apus)
    usable = min(gtt, max(0, free_ram - host_bytes))
    dedicated = vram or 0
    reason = (f"{choice.reason}, so the plan counts {human_bytes(dedicated)} of free carve-out + "
              f"{human_bytes(usable)} of GTT ({human_bytes(gtt)} free, capped by the {human_bytes(free_ram)} of "
              "RAM available" + (f" less the {human_bytes(host_bytes)} the load keeps in RAM" if host_bytes else "")
              + ", since GTT is system RAM)")
    return GpuBudget(dedicated + usable, dedicated, "carve-out + GTT", reason, True)
