"""The live GPU sampler behind the monitor: each GPU's VRAM and busy % now.

Example:
    >>> gpu_usage([GPU(0, "RX 7900 XTX", "gfx1100", "amd", 24 * 2**30, None, False)], root=Path("/nonexistent"))
    [GpuUsage(index=0, name='RX 7900 XTX', vram_used=None, vram_total=25769803776, busy_percent=None, gtt_used=None,
              gtt_total=None)]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rocm_nb._gpu_tools import NVIDIA_USAGE, Runner, parse_nvidia_usage, run_tool
from rocm_nb._gpu_types import GPU, GpuUsage, Hardware
from rocm_nb._sysfs import amdgpu_cards, card_gtt, card_vram, read_int

__all__ = ["gpu_usage"]


def gpu_usage(
    hw_or_gpus: Hardware | Sequence[GPU], *, root: Path = Path("/"), runner: Runner = run_tool
) -> list[GpuUsage]:
    """VRAM used and total and GPU busy % of each GPU now, for live monitors.

    AMD: amdgpu's sysfs files (``gpu_busy_percent``, ``mem_info_vram_used``,
    ``mem_info_vram_total``; an integrated GPU's ``mem_info_gtt_used`` and
    ``mem_info_gtt_total`` too) of the card at the GPU's PCI address: cheap enough
    to read a few times a second. NVIDIA: one ``nvidia-smi --query-gpu`` call.
    No GPU (the CPU backend): an empty list. ``root`` and ``runner`` are the
    seams of :func:`~rocm_nb.hardware.detect`.

    Example:
        >>> gpu_usage(Hardware("cpu", (), None, ()))
        []
        >>> from rocm_nb.hardware import detect
        >>> [u.busy_percent for u in gpu_usage(detect())]  # doctest: +SKIP
        [37]
    """
    gpus = hw_or_gpus.gpus if isinstance(hw_or_gpus, Hardware) else tuple(hw_or_gpus)
    nvidia: dict[int, GpuUsage] = {}
    if any(gpu.vendor == "nvidia" for gpu in gpus):
        nvidia = {usage.index: usage for usage in parse_nvidia_usage(runner(NVIDIA_USAGE) or "")}
    cards = amdgpu_cards(root) if any(gpu.vendor == "amd" for gpu in gpus) else {}
    usage = []
    for gpu in gpus:
        device = cards.get(gpu.pci_slot or "")
        if gpu.vendor == "nvidia":
            usage.append(nvidia.get(gpu.index, GpuUsage(gpu.index, gpu.name, None, gpu.vram_total, None)))
        elif device is None:
            usage.append(GpuUsage(gpu.index, gpu.name, None, gpu.vram_total, None))
        else:
            total, used = card_vram(device)
            gtt_total, gtt_used = card_gtt(device) if gpu.is_apu else (None, None)
            usage.append(GpuUsage(gpu.index, gpu.name, used, total, read_int(device / "gpu_busy_percent"),
                                  gtt_used, gtt_total))
    return usage
