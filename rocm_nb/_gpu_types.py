"""The data types of hardware detection: a backend, its GPUs, what llama-server may see, and a usage sample.

:mod:`rocm_nb.hardware` re-exports them; the policies they answer with live
in :mod:`rocm_nb._hsa`.

Example:
    >>> Hardware("rocm", (GPU(0, "RX 7900 XTX", "gfx1100", "amd", None, None, False),), None, ()).gfx_targets
    ('gfx1100',)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from rocm_nb import _hsa

__all__ = ["GPU", "Backend", "GpuUsage", "Hardware"]

Backend = Literal["rocm", "cuda", "vulkan", "cpu"]


@dataclass(frozen=True)
class GPU:
    """One GPU as the backend numbers it.

    Example:
        >>> GPU(0, "Radeon RX 7900 XTX", "gfx1100", "amd", 24 * 2**30, 2**30, False).vram_free
        24696061952
    """

    index: int
    name: str
    arch: str
    vendor: Literal["amd", "nvidia"]
    vram_total: int | None
    vram_used: int | None
    is_apu: bool
    pci_slot: str | None = None
    """PCI address such as ``0000:03:00.0`` (AMD: from the KFD topology or rocminfo's BDFID)."""

    @property
    def vram_free(self) -> int | None:
        """Free VRAM in bytes (never negative: the counters are not read atomically)."""
        if self.vram_total is None or self.vram_used is None:
            return None
        return max(0, self.vram_total - self.vram_used)


@dataclass(frozen=True)
class Hardware:
    """What :func:`~rocm_nb.hardware.detect` found.

    Example:
        >>> Hardware("cpu", (), None, ()).server_env()
        {}
    """

    backend: Backend
    gpus: tuple[GPU, ...]
    visible_devices: str | None
    notes: tuple[str, ...]

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
    def build_targets(self) -> tuple[str, ...]:
        """:attr:`gfx_targets` plus the targets an ``HSA_OVERRIDE_GFX_VERSION`` runs them as (for ``GPU_TARGETS``).

        Example:
            >>> hw = Hardware("rocm", (GPU(0, "RX 6600", "gfx1032", "amd", None, None, False),), None, ())
            >>> hw.build_targets
            ('gfx1030', 'gfx1032')
        """
        return _hsa.build_targets(self.gfx_targets)

    def server_env(
        self, environ: Mapping[str, str] | None = None, *, hsa_override: str | None = None
    ) -> dict[str, str]:
        """Environment to add for a llama-server child (the user's own settings win).

        ``hsa_override`` is ``None`` (no override), ``"auto"`` (the one
        :func:`~rocm_nb.hardware.hsa_override_for` finds for the GPUs in use, if
        any) or a version such as ``"10.3.0"``; when it sets
        ``HSA_OVERRIDE_GFX_VERSION`` it says so with a :class:`UserWarning`, and
        a ``HSA_OVERRIDE_GFX_VERSION`` already in ``environ`` is kept.

        Example:
            >>> hw = Hardware("rocm", (), "0", ())
            >>> hw.server_env({}), hw.server_env({"HIP_VISIBLE_DEVICES": "1"})
            ({'HIP_VISIBLE_DEVICES': '0'}, {})
        """
        return _hsa.server_env(self, environ, hsa_override)


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
