"""The data types of hardware detection: a backend, its GPUs, what llama-server may see, and a usage sample.

:mod:`rocm_nb.hardware` is their public home; the policies that read them live
in :mod:`rocm_nb.hardware._hsa`.

Example:
    >>> Hardware("rocm", (GPU(0, "RX 7900 XTX", "gfx1100", "amd", None, None, False),), None, ()).gfx_targets
    ('gfx1100',)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rocm_nb.hardware._rocm_install import RocmInstall

__all__ = ["GPU", "Backend", "DeviceType", "GpuUsage", "Hardware", "Vendor"]

Backend = Literal["rocm", "cuda", "vulkan", "cpu"]
Vendor = Literal["amd", "nvidia", "intel", "mesa", "other"]
"""Who made a GPU: from ROCm or CUDA's tools, or a Vulkan device's ``vendorID`` (Mesa: its software devices)."""
DeviceType = Literal["discrete", "integrated", "software", "virtual", "other"]
"""A Vulkan device's ``deviceType``: a ``software`` one (``PHYSICAL_DEVICE_TYPE_CPU``, Mesa's llvmpipe) runs on
the CPU; only ``discrete`` and ``integrated`` ones are GPUs llama.cpp and rocm_nb use without being asked."""


@dataclass(frozen=True)
class GPU:
    """One GPU as the backend numbers it (a Vulkan device by its Vulkan index, as ``vulkaninfo`` lists it).

    Example:
        >>> GPU(0, "Radeon RX 7900 XTX", "gfx1100", "amd", 24 * 2**30, 2**30, False).vram_free
        24696061952
    """

    index: int
    name: str
    arch: str
    vendor: Vendor
    vram_total: int | None
    vram_used: int | None
    is_apu: bool
    pci_slot: str | None = None
    """PCI address such as ``0000:03:00.0`` (AMD: from the KFD topology or rocminfo's BDFID)."""
    gtt_total: int | None = None
    """An integrated GPU's GTT: the system RAM it may map beyond its carve-out (amdgpu's ``mem_info_gtt_total``)."""
    gtt_used: int | None = None
    """GTT in use (``mem_info_gtt_used``); read for integrated GPUs only, ``None`` for discrete ones."""
    vulkan_type: DeviceType | None = None
    """The Vulkan ``deviceType`` of a device found through Vulkan; ``None`` for ROCm and CUDA GPUs."""

    @property
    def device_type(self) -> DeviceType:
        """``discrete``, ``integrated``, ``software``, ``virtual`` or ``other`` (see :data:`DeviceType`).

        Example:
            >>> GPU(0, "llvmpipe (LLVM 15.0.6, 256 bits)", "", "mesa", 2**31, 0, False,
            ...     vulkan_type="software").device_type
            'software'
        """
        return self.vulkan_type or ("integrated" if self.is_apu else "discrete")

    @property
    def vram_free(self) -> int | None:
        """Free VRAM in bytes (never negative: the counters are not read atomically); an APU's carve-out.

        Example:
            >>> GPU(0, "Radeon 8060S", "gfx1151", "amd", 2**29, 2**28, True, None, 2**37, 0).vram_free
            268435456
        """
        return _free(self.vram_total, self.vram_used)

    @property
    def gtt_free(self) -> int | None:
        """Free GTT in bytes (an integrated GPU's system-RAM allowance); ``None`` when not read.

        Example:
            >>> GPU(0, "Radeon 8060S", "gfx1151", "amd", 2**29, 0, True, None, 2**37, 2**30).gtt_free // 2**30
            127
        """
        return _free(self.gtt_total, self.gtt_used)


def _free(total: int | None, used: int | None) -> int | None:
    """``total - used``, never negative; ``None`` when either is unknown."""
    return None if total is None or used is None else max(0, total - used)


@dataclass(frozen=True)
class Hardware:
    """What :func:`~rocm_nb.hardware.detect` found: plain data, no policy.

    What a llama-server child needs in its environment, and which gfx
    targets a ROCm build compiles, are :mod:`rocm_nb.hardware._hsa`'s
    decisions (``server_env``, ``build_targets``).

    Example:
        >>> Hardware("cpu", (), None, ()).visible_gpus
        ()
    """

    backend: Backend
    gpus: tuple[GPU, ...]
    visible_devices: str | None
    notes: tuple[str, ...]
    rocm: RocmInstall | None = None
    """The ROCm install found (its version and which gfx targets its rocBLAS/hipBLASLt ship kernels for)."""

    @property
    def visible_gpus(self) -> tuple[GPU, ...]:
        """The GPUs llama-server will see: those in :attr:`visible_devices` (all when it is ``None``).

        Example:
            >>> gpus = (GPU(0, "RX 7900 XTX", "gfx1100", "amd", None, None, False),
            ...         GPU(1, "Radeon 780M", "gfx1103", "amd", None, None, True))
            >>> [g.name for g in Hardware("rocm", gpus, "0", ()).visible_gpus]
            ['RX 7900 XTX']
        """
        if self.visible_devices is None:
            return self.gpus
        visible = set(self.visible_devices.split(","))
        return tuple(g for g in self.gpus if str(g.index) in visible)

    @property
    def gfx_targets(self) -> tuple[str, ...]:
        """Sorted gfx targets of the AMD GPUs llama-server will use (for ``AMDGPU_TARGETS``)."""
        return tuple(sorted({g.arch for g in self.visible_gpus if g.vendor == "amd" and g.arch}))

    @property
    def apus(self) -> tuple[GPU, ...]:
        """The integrated GPUs llama-server will use.

        Example:
            >>> Hardware("cpu", (), None, ()).apus
            ()
        """
        return tuple(g for g in self.visible_gpus if g.is_apu)


@dataclass(frozen=True)
class GpuUsage:
    """One GPU's memory and load right now, from :func:`~rocm_nb.hardware.gpu_usage` (``None``: not known).

    Example:
        >>> GpuUsage(0, "AMD Radeon RX 7900 GRE", 2**30, 16 * 2**30, 42).busy_percent
        42
    """

    index: int
    name: str
    vram_used: int | None
    vram_total: int | None
    busy_percent: int | None
    gtt_used: int | None = None
    """An integrated GPU's GTT in use (``None`` for discrete GPUs): shown beside its carve-out."""
    gtt_total: int | None = None
    source: str = ""
    """Where the memory figures come from (``amdgpu sysfs``, ``nvidia-smi``, a server's own report…); empty: unknown."""
