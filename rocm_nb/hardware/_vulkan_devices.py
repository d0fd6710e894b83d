"""Vulkan devices of every vendor: what ``vulkaninfo`` (or a Vulkan llama-server's ``--list-devices``) reports.

Vulkan is how llama.cpp runs on GPUs that ROCm or CUDA do not serve: AMD
GPUs ROCm has no kernels for (many consumer RDNA cards, older integrated
GPUs), Intel Arc and integrated GPUs, NVIDIA without CUDA. Each device
gets a :class:`~rocm_nb.hardware.GPU` with its Vulkan index (the
``GPU<n>`` of ``vulkaninfo``, which is also the index ``GGML_VK_VISIBLE_DEVICES``
takes: both enumerate the loader's physical devices in the same order), its
name, vendor (``vendorID``), type (``deviceType``) and memory.

**Memory, as llama.cpp counts it** (``ggml_backend_vk_get_device_memory`` in
the pinned sources): the total is the sum of the device-local heaps (of
every heap on an integrated GPU), and the free memory is each heap's
``budget - usage`` where the driver has ``VK_EXT_memory_budget`` (vulkaninfo
then prints ``budget`` and ``usage`` under each heap), else the heap's whole
size. A budget above the heap's size (RADV's small BAR heap reports
16 EiB) is capped at the size. So the fit plan sees the free memory the
server itself will see.

**Which devices are chosen without being asked** (:func:`why_not_chosen`).
Mesa's lavapipe (``llvmpipe``, ``PHYSICAL_DEVICE_TYPE_CPU``) is a conformant
Vulkan device that runs on the CPU, about 50 times slower than llama.cpp's own
CPU backend (benchmarks/README.md). The pinned llama.cpp ignores it, and
virtual and "other" devices, unless ``GGML_VK_VISIBLE_DEVICES`` names them;
:func:`~rocm_nb.hardware.detect` never chooses them either unless
``backend="vulkan"`` asks for Vulkan, nor an integrated GPU of another vendor
than AMD (a laptop keeps its CPU build: whether its iGPU is faster was not
measured here). Discrete GPUs of every vendor and AMD's integrated ones are
chosen.

**Sources.** ``vulkaninfo`` in full (its ``--summary`` has no memory; this
parser reads both forms, the summary's devices with memory unknown). Without
``vulkaninfo``, an installed Vulkan llama-server's ``--list-devices``
(``Vulkan0: AMD Radeon RX 6600 (RADV NAVI23) (8176 MiB, 7900 MiB free)``)
gives what the server sees; it lists only the GPUs llama.cpp uses by default,
its indices are its own and it names no type, so those devices are taken as
discrete GPUs.

Example:
    >>> gpus = parse_vulkaninfo('''
    ... GPU0:
    ... \\tvendorID = 0x10005
    ... \\tdeviceType = PHYSICAL_DEVICE_TYPE_CPU
    ... \\tdeviceName = llvmpipe (LLVM 15.0.6, 256 bits)
    ... ''')
    >>> gpus[0].name, gpus[0].vendor, gpus[0].device_type, gpus[0].vram_total
    ('llvmpipe (LLVM 15.0.6, 256 bits)', 'mesa', 'software', None)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from rocm_nb.hardware._tools import Runner
from rocm_nb.hardware._types import GPU, DeviceType, Vendor

__all__ = ["LLAMA_DEFAULT_TYPES", "VISIBLE_ENV", "VULKANINFO", "has_render_node", "llama_default",
           "parse_list_devices", "parse_vulkaninfo", "vulkan_gpus", "why_not_chosen"]

VULKANINFO = ("vulkaninfo",)
"""The call :func:`parse_vulkaninfo` reads (the full report: ``--summary`` leaves the memory heaps out)."""

VISIBLE_ENV = "GGML_VK_VISIBLE_DEVICES"
"""llama.cpp's list of the Vulkan indices it may use; the only way it uses a software device."""

LLAMA_DEFAULT_TYPES: frozenset[DeviceType] = frozenset({"discrete", "integrated"})
"""The device types llama.cpp uses without ``GGML_VK_VISIBLE_DEVICES``; rocm_nb's auto-detection takes fewer
(:func:`why_not_chosen`)."""

_TYPES: dict[str, DeviceType] = {
    "PHYSICAL_DEVICE_TYPE_DISCRETE_GPU": "discrete", "PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU": "integrated",
    "PHYSICAL_DEVICE_TYPE_CPU": "software", "PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU": "virtual",
}
_VENDORS: dict[int, Vendor] = {0x1002: "amd", 0x10DE: "nvidia", 0x8086: "intel", 0x10005: "mesa"}
_DEVICE = re.compile(r"^GPU(\d+):\s*$", re.MULTILINE)
_FIELD = re.compile(r"^\s*(\w+)\s*=\s*(.*?)\s*$")
_HEAP = re.compile(r"^\s*memoryHeaps\[\d+\]:\s*$")
_LISTED = re.compile(r"^\s*Vulkan(\d+):\s*(.*?)\s*\((\d+) MiB, (\d+) MiB free\)\s*$", re.MULTILINE)


def _number(text: str) -> int | None:
    """The leading decimal or ``0x`` number of a vulkaninfo value (``2147483648 (0x80000000) (2.00 GiB)``)."""
    match = re.match(r"(0x[0-9a-fA-F]+|\d+)", text)
    return int(match.group(1), 0) if match else None


def _heaps(lines: Sequence[str]) -> list[tuple[int, int | None, int | None, bool]]:
    """(size, budget, usage, device-local) of each ``memoryHeaps[i]`` block of one device."""
    heaps: list[tuple[int, int | None, int | None, bool]] = []
    current: dict[str, int | None] | None = None
    local = False

    def close() -> None:
        if current is not None and current.get("size") is not None:
            heaps.append((current["size"] or 0, current.get("budget"), current.get("usage"), local))

    for line in lines:
        stripped = line.strip()
        if _HEAP.match(line):
            close()
            current, local = {}, False
        elif current is not None and (stripped.startswith("memoryTypes") or stripped.startswith("Vk")):
            close()
            current = None
        elif current is not None:
            field = _FIELD.match(line)
            if field and field.group(1) in ("size", "budget", "usage"):
                current[field.group(1)] = _number(field.group(2))
            elif stripped == "MEMORY_HEAP_DEVICE_LOCAL_BIT":
                local = True
    close()
    return heaps


def _memory(heaps: Sequence[tuple[int, int | None, int | None, bool]], integrated: bool) -> tuple[int, int] | None:
    """(total, free) of the heaps llama.cpp counts (see the module docstring); ``None`` without heaps."""
    counted = [heap for heap in heaps if integrated or heap[3]]
    if not counted:
        return None
    total = sum(size for size, _, _, _ in counted)
    free = sum(size if budget is None or usage is None else max(0, min(budget, size) - usage)
               for size, budget, usage, _ in counted)
    return total, free


def _pci_slot(fields: dict[str, str]) -> str | None:
    """``0000:03:00.0`` from ``VK_EXT_pci_bus_info``'s fields, when the device reports them."""
    parts = [_number(fields.get(name, "")) for name in ("pciDomain", "pciBus", "pciDevice", "pciFunction")]
    if any(part is None for part in parts):
        return None
    domain, bus, device, function = (part or 0 for part in parts)
    return f"{domain:04x}:{bus:02x}:{device:02x}.{function:x}"


def parse_vulkaninfo(text: str) -> list[GPU]:
    """The devices of a ``vulkaninfo`` report (full or ``--summary``), in Vulkan index order.

    Memory is ``None`` when the report has no heaps (the summary form).
    ``vram_used`` is total less free (see the module docstring).

    Example:
        >>> parse_vulkaninfo("no devices here")
        []
    """
    blocks = _DEVICE.split(text)
    gpus = []
    for number, body in zip(blocks[1::2], blocks[2::2], strict=True):
        lines = body.splitlines()
        fields: dict[str, str] = {}
        for line in lines:
            field = _FIELD.match(line)
            if field and field.group(1) not in fields:
                fields[field.group(1)] = field.group(2)
        if "deviceName" not in fields:
            continue
        vulkan_type = _TYPES.get(fields.get("deviceType", ""), "other")
        memory = _memory(_heaps(lines), vulkan_type == "integrated")
        total, used = (None, None) if memory is None else (memory[0], memory[0] - memory[1])
        gpus.append(GPU(index=int(number), name=fields["deviceName"], arch="",
                        vendor=_VENDORS.get(_number(fields.get("vendorID", "")) or 0, "other"),
                        vram_total=total, vram_used=used, is_apu=vulkan_type == "integrated",
                        pci_slot=_pci_slot(fields), vulkan_type=vulkan_type))
    return gpus


def parse_list_devices(text: str) -> list[GPU]:
    """The Vulkan devices of a llama-server's ``--list-devices`` (memory in MiB, type unknown: taken as discrete).

    Example:
        >>> gpu = parse_list_devices("Available devices:\\n  Vulkan0: llvmpipe (LLVM 15.0.6, 256 bits) "
        ...                          "(2048 MiB, 2048 MiB free)\\n")[0]
        >>> gpu.index, gpu.name, gpu.vram_total // 2**20, gpu.vram_free // 2**20
        (0, 'llvmpipe (LLVM 15.0.6, 256 bits)', 2048, 2048)
    """
    gpus = []
    for match in _LISTED.finditer(text):
        total, free = int(match.group(3)) << 20, int(match.group(4)) << 20
        gpus.append(GPU(index=int(match.group(1)), name=match.group(2), arch="", vendor="other",
                        vram_total=total, vram_used=max(0, total - free), is_apu=False, vulkan_type="discrete"))
    return gpus


def llama_default(gpu: GPU) -> bool:
    """Whether llama.cpp uses a Vulkan device without ``GGML_VK_VISIBLE_DEVICES``: a discrete or integrated GPU.

    Example:
        >>> llama_default(GPU(0, "llvmpipe", "", "mesa", None, None, False, vulkan_type="software"))
        False
    """
    return gpu.device_type in LLAMA_DEFAULT_TYPES


def why_not_chosen(gpu: GPU) -> str | None:
    """Why auto-detection does not choose a Vulkan device (``None``: it does): a software, virtual or "other"
    device, or an integrated GPU of a vendor other than AMD.

    Example:
        >>> why_not_chosen(GPU(0, "Arc A770", "", "intel", None, None, False, vulkan_type="discrete")) is None
        True
        >>> why_not_chosen(GPU(1, "llvmpipe", "", "mesa", None, None, False, vulkan_type="software"))[:40]
        'a software device: it runs on the CPU, m'
    """
    if gpu.device_type == "software":
        return ("a software device: it runs on the CPU, more slowly than llama.cpp's own CPU backend "
                "(benchmarks/README.md), so it is for trying the GPU path, not for speed")
    if not llama_default(gpu):
        return f"a {gpu.device_type} device, which llama.cpp uses only when {VISIBLE_ENV} names it"
    if gpu.device_type == "integrated" and gpu.vendor != "amd":
        return (f"an integrated {gpu.vendor} GPU: rocm_nb keeps the CPU build there unless asked (whether the GPU "
                "is faster depends on the chip and the model)")
    return None


def has_render_node(root: Path = Path("/")) -> bool:
    """Whether the kernel offers a GPU render node (``/dev/dri/renderD*``), which every GPU Vulkan driver opens.

    Without one only software Vulkan devices can exist, so auto-detection
    need not run ``vulkaninfo`` at all.

    Example:
        >>> has_render_node(Path("/nonexistent"))
        False
    """
    return any((root / "dev" / "dri").glob("renderD*"))


def vulkan_gpus(runner: Runner, server: Path | None = None) -> tuple[tuple[GPU, ...], str]:
    """The Vulkan devices of this machine and where they were read: ``vulkaninfo``, else ``server --list-devices``.

    Returns ``((), why)`` when neither answers.

    Example:
        >>> vulkan_gpus(lambda argv: None)
        ((), 'no Vulkan devices: vulkaninfo (Debian: vulkan-tools) is not installed or found none')
    """
    report = runner(VULKANINFO)
    gpus = parse_vulkaninfo(report or "")
    if gpus:
        return tuple(gpus), "vulkaninfo"
    if server is not None:
        listed = parse_list_devices(runner([str(server), "--list-devices"]) or "")
        if listed:
            return tuple(listed), f"{server.name} --list-devices"
    return (), "no Vulkan devices: vulkaninfo (Debian: vulkan-tools) is not installed or found none"
