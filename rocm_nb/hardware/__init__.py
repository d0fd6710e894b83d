"""Which backend this machine has, its GPUs, and which of them llama-server may see.

ROCm: ``/dev/kfd`` exists and ``rocminfo`` lists a GPU agent (or, without
``rocminfo``, the KFD topology in ``/sys/class/kfd/kfd/topology/nodes`` lists a
GPU node); names and gfx targets come from ``rocminfo``, VRAM from ``rocm-smi
--showmeminfo vram --json``, failing that ``amd-smi metric --mem-usage
--json``, failing that amdgpu's sysfs files (``mem_info_vram_total`` and
``mem_info_vram_used`` of ``/sys/class/drm/card*/device``). CUDA:
``nvidia-smi --query-gpu`` answers. Vulkan (:mod:`rocm_nb.hardware._vulkan_devices`):
a discrete GPU, or an AMD integrated one, that ``vulkaninfo`` lists, looked
for when the kernel has a GPU render node and neither ROCm nor CUDA serves
the machine, or when ROCm finds only GPUs it cannot run (no kernels for their
gfx target, nor a sibling's to borrow). Otherwise the CPU: a software Vulkan
device (Mesa's llvmpipe) is never chosen without being asked, nor is another
vendor's integrated GPU (an Intel laptop keeps its CPU build unless asked).
``backend=`` (or ``ROCM_NB_BACKEND``) forces a backend; a forced Vulkan
with only a software device uses it, and says what it is.

HIP numbers the GPU nodes of the KFD topology in node order (CPU nodes have
``simd_count 0`` and are skipped), which is also the order of rocminfo's GPU
agents; rocminfo's ``Internal Node ID`` names the KFD node of an agent. A KFD
node's PCI address (``domain`` and ``location_id``, the bus/device/function
packed as ``bus << 8 | device << 3 | function``) finds its DRM card through
the card's ``device/uevent`` (``PCI_SLOT_NAME``), so each sysfs card is tied
to the right HIP device index before ``HIP_VISIBLE_DEVICES`` is built.

An APU's integrated GPU crashes llama-server's ROCm backend when a discrete
GPU is present, so only the discrete GPUs are exposed through
``HIP_VISIBLE_DEVICES``. The rule for "integrated": rocminfo reports
``Memory Properties: APU`` for the agent (ROCm 6 and later), or its gfx
target only ships in APUs (gfx1035/gfx1036/gfx1103/gfx1150/gfx1151/gfx90c…; from
rocminfo, or the KFD node's ``gfx_target_version``). An iGPU's sysfs "VRAM" is
only the carve-out the firmware reserves from system RAM; it allocates from
system RAM beyond it. An APU alone stays visible:
it is all the machine has. A ``HIP_VISIBLE_DEVICES`` or
``ROCR_VISIBLE_DEVICES`` set by the user always wins.

The parts: :mod:`rocm_nb.hardware._types` (the data types, whose public home
is here), :mod:`rocm_nb.hardware._tools` (the tools and their output),
:mod:`rocm_nb.hardware._sysfs` (the KFD topology and DRM cards),
:mod:`rocm_nb.hardware._hsa` (the ``HSA_OVERRIDE_GFX_VERSION`` policy and what
a llama-server child's environment needs), :mod:`rocm_nb.hardware._unified`
(an APU's unified memory), :mod:`rocm_nb.hardware._cpu` (CPU features) and
:mod:`rocm_nb.hardware._rocm_install` (the installed ROCm). This module
detects, decides what llama-server may see, describes, and samples usage
live (:func:`gpu_usage`, for the monitor).

Example:
    >>> hw = detect(runner=lambda argv: None, root=Path("/nonexistent"), environ={})
    >>> hw.backend, hw.gpus
    ('cpu', ())
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import get_args

from rocm_nb.hardware._hsa import HSA_OVERRIDES, VISIBILITY_ENV, decide_override, hsa_override_for, rocm_cannot_run
from rocm_nb.hardware._rocm_install import find_rocm
from rocm_nb.hardware._sysfs import agent_slot, amdgpu_cards, card_gtt, card_vram, kfd_gpu_nodes, read_int
from rocm_nb.hardware._tools import (
    NVIDIA_GPUS,
    NVIDIA_USAGE,
    Agent,
    Runner,
    parse_amd_smi,
    parse_nvidia_smi,
    parse_nvidia_usage,
    parse_rocm_smi_json,
    parse_rocminfo,
    run_tool,
)
from rocm_nb.hardware._types import GPU, Backend, GpuUsage, Hardware
from rocm_nb.hardware._unified import decide
from rocm_nb.hardware._vulkan_devices import VISIBLE_ENV, has_render_node, llama_default, vulkan_gpus, why_not_chosen

__all__ = [
    "GPU",
    "HSA_OVERRIDES",
    "Backend",
    "GpuUsage",
    "Hardware",
    "Runner",
    "describe",
    "describe_gpu",
    "detect",
    "device_names",
    "forced_backend",
    "gpu_usage",
    "hsa_override_for",
    "select_device",
]


def _detect_rocm(runner: Runner, notes: list[str], root: Path) -> tuple[GPU, ...]:
    agents = parse_rocminfo(runner(["rocminfo"]) or "")
    nodes = kfd_gpu_nodes(root)
    if not agents and nodes and os.access(root / "dev" / "kfd", os.R_OK | os.W_OK):
        notes.append("rocminfo did not answer: the GPUs were read from the KFD topology")
        agents = [Agent(n.arch, f"AMD {n.arch} GPU", n.arch, n.is_apu, n.node) for n in nodes.values()]
    if not agents:
        notes.append("/dev/kfd exists but rocminfo lists no GPU agent (is your user in the render group?)")
        return ()
    cards = amdgpu_cards(root)
    slots = [agent_slot(agent, nodes, cards) for agent in agents]
    vram = parse_rocm_smi_json(runner(["rocm-smi", "--showmeminfo", "vram", "--json"]) or "")
    if not vram:
        vram = parse_amd_smi(runner(["amd-smi", "metric", "--mem-usage", "--json"]) or "")
    if not vram:
        vram = {i: card_vram(cards[slot]) for i, slot in enumerate(slots) if slot in cards}
    if not vram:
        notes.append("VRAM unknown: neither rocm-smi, amd-smi nor amdgpu's sysfs files answered")
    gpus = []
    for i, (agent, slot) in enumerate(zip(agents, slots, strict=True)):
        node = nodes.get(agent.kfd_node) if agent.kfd_node is not None else None
        is_apu = agent.is_apu or (node is not None and node.is_apu)
        gtt = card_gtt(cards[slot]) if is_apu and slot in cards else (None, None)
        gpus.append(GPU(i, agent.marketing_name, agent.arch or (node.arch if node else ""), "amd",
                        *vram.get(i, (None, None)), is_apu, slot, *gtt))
    return tuple(gpus)


def _visible(gpus: tuple[GPU, ...], notes: list[str]) -> str | None:
    discrete = [g for g in gpus if not g.is_apu]
    apus = [g for g in gpus if g.is_apu]
    if not apus:
        return None
    if not discrete:
        notes.append(f"only an integrated GPU ({apus[0].arch}); it stays visible")
        return None
    for apu in apus:
        notes.append(f"masked the integrated GPU {apu.name} ({apu.arch}, HIP device {apu.index})")
    return ",".join(str(g.index) for g in discrete)


def _detect_vulkan(runner: Runner, notes: list[str], root: Path, *, forced: bool,
                   server: Path | None) -> Hardware | None:
    """The Vulkan GPUs to use (see the module docstring); ``None`` when none is chosen."""
    gpus, source = vulkan_gpus(runner, server)
    usable = tuple(g for g in gpus if (llama_default(g) if forced else why_not_chosen(g) is None))
    if forced and not usable and gpus:  # only software (or virtual) devices: named for llama.cpp, and said what
        notes += [f"Vulkan device {g.index}, {g.name}, is {why_not_chosen(g)}; used because the Vulkan backend was "
                  f"asked for ({VISIBLE_ENV} names it)" for g in gpus]
        visible = ",".join(str(g.index) for g in gpus)
        return Hardware("vulkan", gpus, visible, (*notes, f"Vulkan devices read from {source}"))
    notes += [f"Vulkan device {g.index}, {g.name}, is never chosen automatically: it is {why}; backend='vulkan' "
              "uses it" for g in gpus if g not in usable and (why := why_not_chosen(g))]
    if not usable:
        return None
    if not (root / "dev" / "kfd").exists():
        notes += [f"ROCm cannot use {g.name}: /dev/kfd (amdgpu's compute interface, which ROCm needs) is "
                  "missing; llama-server's Vulkan build runs it" for g in usable if g.vendor == "amd"]
    return Hardware("vulkan", usable, None, (*notes, f"Vulkan devices read from {source}"))


def detect(
    *,
    runner: Runner = run_tool,
    environ: Mapping[str, str] | None = None,
    root: Path = Path("/"),
    backend: Backend | None = None,
    vulkan_server: Path | None = None,
) -> Hardware:
    """Find the backend and GPUs of this machine.

    ``backend`` forces one (else ``$ROCM_NB_BACKEND``, else auto-detection;
    see the module docstring). ``vulkan_server``, a Vulkan llama-server,
    lists the Vulkan devices when ``vulkaninfo`` is missing. ``runner``,
    ``environ`` and ``root`` are seams: tests replay recorded tool outputs
    and fake ``/dev/kfd``, ``/dev/dri`` and the sysfs tree (``root/sys``).

    Example:
        >>> detect(environ={"ROCM_NB_BACKEND": "cpu"}).backend
        'cpu'
        >>> detect(backend="cpu", environ={"ROCM_NB_BACKEND": "rocm"}).notes
        ('backend forced: cpu',)
    """
    env = os.environ if environ is None else environ
    notes: list[str] = []
    forced = forced_backend(backend, env)
    asked = env.get("ROCM_NB_BACKEND", "").strip().lower()
    if backend is None and asked and forced is None:
        notes.append(f"ignored ROCM_NB_BACKEND={asked!r} (use one of {', '.join(get_args(Backend))})")
    if forced == "cpu":
        return Hardware("cpu", (), None, ("backend forced: cpu" if backend else
                                          "backend forced by ROCM_NB_BACKEND=cpu",))
    if forced in (None, "rocm") and (root / "dev" / "kfd").exists():
        gpus = _detect_rocm(runner, notes, root)
        if gpus:
            hardware = Hardware("rocm", gpus, _visible(gpus, notes), tuple(notes), find_rocm(root, env))
            refusal = rocm_cannot_run(hardware.gfx_targets, hardware.rocm)
            if forced == "rocm" or refusal is None:
                return hardware
            notes.append(refusal)
    if forced in (None, "cuda"):
        nvidia = parse_nvidia_smi(runner(NVIDIA_GPUS) or "")
        if nvidia:
            return Hardware("cuda", tuple(nvidia), None, tuple(notes))
    if forced == "vulkan" or (forced is None and has_render_node(root)):
        vulkan = _detect_vulkan(runner, notes, root, forced=forced == "vulkan", server=vulkan_server)
        if vulkan is not None:
            return vulkan
    if forced is not None:
        notes.append(f"backend {forced!r} asked for, but no such GPU was found")
    notes.append("no GPU found: llama-server runs on the CPU")
    return Hardware("cpu", (), None, tuple(notes))


def device_names(hw: Hardware) -> dict[str, GPU]:
    """llama.cpp's name for each GPU it will use (``Vulkan0``, ``ROCm1``, ``CUDA0``): it numbers the visible
    devices from 0, in the order of ``visible_devices`` (all of ``hw``'s GPUs when that is unset).

    Example:
        >>> gpus = (GPU(0, "RX 7900 XTX", "gfx1100", "amd", None, None, False),
        ...         GPU(2, "Arc A770", "", "intel", None, None, False, vulkan_type="discrete"))
        >>> {name: gpu.name for name, gpu in device_names(Hardware("vulkan", gpus, "2", ())).items()}
        {'Vulkan0': 'Arc A770'}
    """
    prefix = {"rocm": "ROCm", "cuda": "CUDA", "vulkan": "Vulkan"}.get(hw.backend)
    if prefix is None:
        return {}
    by_index = {gpu.index: gpu for gpu in hw.gpus}
    order = ([int(i) for i in hw.visible_devices.split(",") if i.strip().isdigit()] if hw.visible_devices
             else [gpu.index for gpu in hw.gpus])
    return {f"{prefix}{k}": by_index[i] for k, i in enumerate(i for i in order if i in by_index)}


def forced_backend(backend: str | None, environ: Mapping[str, str] | None = None) -> Backend | None:
    """The backend asked for: ``backend`` (checked), else a valid ``$ROCM_NB_BACKEND``, else ``None`` (detect).

    Example:
        >>> forced_backend(None, {"ROCM_NB_BACKEND": "Vulkan"}), forced_backend("cpu", {})
        ('vulkan', 'cpu')
        >>> forced_backend("metal", {})
        Traceback (most recent call last):
        ...
        ValueError: backend='metal' is not one of rocm, cuda, vulkan, cpu (or None: detect this machine's)
    """
    if backend is not None:
        if backend not in get_args(Backend):
            raise ValueError(f"backend={backend!r} is not one of {', '.join(get_args(Backend))} (or None: detect "
                             "this machine's)")
        return backend  # type: ignore[return-value]
    env = os.environ if environ is None else environ
    value = env.get("ROCM_NB_BACKEND", "").strip().lower()
    return value if value in get_args(Backend) else None  # type: ignore[return-value]


def select_device(hw: Hardware, device: int | None) -> Hardware:
    """``hw`` with only GPU ``device`` (its HIP, CUDA or Vulkan index) visible to llama-server; ``hw`` for ``None``.

    Example:
        >>> gpus = (GPU(0, "RX 7900 XTX", "gfx1100", "amd", None, None, False),
        ...         GPU(1, "RX 6600", "gfx1032", "amd", None, None, False))
        >>> select_device(Hardware("rocm", gpus, None, ()), 1).visible_gpus[0].name
        'RX 6600'
        >>> select_device(Hardware("cpu", (), None, ()), 0)
        Traceback (most recent call last):
        ...
        ValueError: device=0, but the cpu backend has no GPUs; leave device out, or pick a backend with GPUs
    """
    if device is None:
        return hw
    if isinstance(device, bool) or not isinstance(device, int):
        raise ValueError(f"device= takes a GPU's index (an int, see `rocm-nb doctor`), got {device!r}")
    if not hw.gpus:
        raise ValueError(f"device={device}, but the {hw.backend} backend has no GPUs; leave device out, or pick a "
                         "backend with GPUs")
    chosen = [g for g in hw.gpus if g.index == device]
    if not chosen:
        listed = ", ".join(f"{g.index} ({g.name})" for g in hw.gpus)
        raise ValueError(f"device={device} is not one of the {hw.backend} devices: {listed}; see `rocm-nb doctor`")
    note = f"device={device}: llama-server sees {chosen[0].name} only"
    return Hardware(hw.backend, hw.gpus, str(device), (*hw.notes, note), hw.rocm)


def _gib(used: int | None, total: int) -> str:
    return f"{'?' if used is None else f'{used / 2**30:.1f}'} / {total / 2**30:.1f} GiB used"


def _memory(gpu: GPU) -> str:
    """One GPU's memory for :func:`describe`: VRAM, or an APU's carve-out and GTT apart."""
    if gpu.vram_total is None:
        memory = "VRAM unknown"
    else:
        memory = f"{'carve-out' if gpu.is_apu else 'VRAM'} {_gib(gpu.vram_used, gpu.vram_total)}"
    if gpu.gtt_total is not None:
        memory += f" · GTT {_gib(gpu.gtt_used, gpu.gtt_total)} (system RAM the GPU may map)"
    elif gpu.is_apu and gpu.vram_total is not None:
        memory += " (a carve-out of system RAM; it shares the rest of system RAM too)"
    return memory


def describe_gpu(gpu: GPU) -> str:
    """One line for a GPU: its index, name, kind and memory (a Vulkan device's type and Vulkan index).

    Example:
        >>> describe_gpu(GPU(0, "llvmpipe (LLVM 15.0.6, 256 bits)", "", "mesa", 2**31, 0, False,
        ...                  vulkan_type="software"))
        'Vulkan 0: llvmpipe (LLVM 15.0.6, 256 bits) (software, mesa) · 2.0 GiB of device memory, 2.0 GiB free'
    """
    if gpu.vulkan_type is not None:
        free = gpu.vram_free
        memory = "device memory unknown" if gpu.vram_total is None else (
            f"{gpu.vram_total / 2**30:.1f} GiB of device memory"
            + ("" if free is None else f", {free / 2**30:.1f} GiB free"))
        return f"Vulkan {gpu.index}: {gpu.name} ({gpu.device_type}, {gpu.vendor}) · {memory}"
    kind = "integrated" if gpu.is_apu else gpu.vendor
    return f"GPU {gpu.index}: {gpu.name} ({gpu.arch or '?'}, {kind}) · {_memory(gpu)}"


def describe(hw: Hardware) -> list[str]:
    """Human-readable lines for ``rocm-nb doctor`` and ``%rocm_status``.

    Each GPU with its memory (an integrated GPU's carve-out and GTT apart);
    on ROCm, the unified-memory decision for an integrated GPU and the
    evidence for or against ``HSA_OVERRIDE_GFX_VERSION`` (what the installed
    ROCm ships kernels for).

    Example:
        >>> describe(Hardware("cpu", (), None, ("no GPU found",)))
        ['backend: cpu', 'no GPU found']
    """
    lines = [f"backend: {hw.backend}"]
    lines += [describe_gpu(gpu) for gpu in hw.gpus]
    if hw.visible_devices is not None:
        lines.append(f"{VISIBILITY_ENV.get(hw.backend, ('visible devices',))[0]}={hw.visible_devices} for llama-server")
    if hw.backend != "rocm":
        return lines + list(hw.notes)
    if hw.rocm is not None:
        lines.append(f"ROCm {hw.rocm.version_text} at {hw.rocm.path}")
    unified = decide(hw, "rocm", "auto")
    if unified.reason:
        lines.append(f"unified memory: {unified.reason}")
    decision = decide_override(hw.gfx_targets, hw.rocm)
    lines += decision.evidence
    if decision.version:
        lines.append(f'LocalModel(..., hsa_override="auto") sets HSA_OVERRIDE_GFX_VERSION={decision.version} '
                     "for llama-server only")
    return lines + list(hw.notes)


def gpu_usage(
    hw_or_gpus: Hardware | Sequence[GPU], *, root: Path = Path("/"), runner: Runner = run_tool
) -> list[GpuUsage]:
    """VRAM used and total and GPU busy % of each GPU now, for live monitors.

    AMD: amdgpu's sysfs files (``gpu_busy_percent``, ``mem_info_vram_used``,
    ``mem_info_vram_total``; an integrated GPU's ``mem_info_gtt_used`` and
    ``mem_info_gtt_total`` too) of the card at the GPU's PCI address: cheap enough
    to read a few times a second. NVIDIA: one ``nvidia-smi --query-gpu`` call.
    No GPU (the CPU backend): an empty list. A GPU with neither (a Vulkan
    device without sysfs, such as lavapipe): its total from detection, its use
    unknown (a ``LocalModel`` fills it in from its server's own report). Each
    sample's ``source`` says where its numbers come from. ``root`` and
    ``runner`` are the seams of :func:`~rocm_nb.hardware.detect`.

    Example:
        >>> gpu_usage([GPU(0, "RX 7900 XTX", "gfx1100", "amd", 24 * 2**30, None, False)], root=Path("/nonexistent"))
        [GpuUsage(index=0, name='RX 7900 XTX', vram_used=None, vram_total=25769803776, busy_percent=None, \
gtt_used=None, gtt_total=None, source='')]
        >>> gpu_usage(Hardware("cpu", (), None, ()))
        []
        >>> [u.busy_percent for u in gpu_usage(detect())]  # doctest: +SKIP
        [37]
    """
    gpus = hw_or_gpus.gpus if isinstance(hw_or_gpus, Hardware) else tuple(hw_or_gpus)
    nvidia: dict[int, GpuUsage] = {}
    if any(gpu.vendor == "nvidia" and gpu.vulkan_type is None for gpu in gpus):
        nvidia = {usage.index: usage for usage in parse_nvidia_usage(runner(NVIDIA_USAGE) or "")}
    cards = amdgpu_cards(root) if any(gpu.vendor == "amd" for gpu in gpus) else {}
    usage = []
    for gpu in gpus:
        device = cards.get(gpu.pci_slot or "")
        if gpu.vendor == "nvidia" and gpu.vulkan_type is None:  # nvidia-smi numbers GPUs as CUDA does
            usage.append(nvidia.get(gpu.index, GpuUsage(gpu.index, gpu.name, None, gpu.vram_total, None)))
        elif device is None:
            source = "total from vulkaninfo" if gpu.vulkan_type is not None and gpu.vram_total is not None else ""
            usage.append(GpuUsage(gpu.index, gpu.name, None, gpu.vram_total, None, source=source))
        else:
            total, used = card_vram(device)
            gtt_total, gtt_used = card_gtt(device) if gpu.is_apu else (None, None)
            usage.append(GpuUsage(gpu.index, gpu.name, used, total, read_int(device / "gpu_busy_percent"),
                                  gtt_used, gtt_total, "amdgpu sysfs"))
    return usage
