"""What a llama-server says about its own memory while it loads: layers offloaded, buffers per device, projection.

It lives with the binaries because the smoke test of a GPU build
(:mod:`rocm_nb.binary._smoke`) reads it too: a build is proven on a GPU only
when its log shows model buffers on a GPU device. :class:`~rocm_nb.server.LlamaServer`
reads it for ``model.status()`` and the monitor.

At log verbosity 4 (``-lv 4``, which :class:`~rocm_nb.server.ServerConfig`
asks for on GPU backends) the pinned server prints, while loading:

* ``load_tensors: offloaded 31/31 layers to GPU``: how many of the model's
  layers (the output layer counted as one, as ``-ngl`` counts) went to the
  GPU devices;
* one line per buffer it allocates, naming the buffer's device
  (``Vulkan0``, ``ROCm0``, ``CUDA0``; host buffers are ``CPU``,
  ``CPU_Mapped``, ``Vulkan_Host`` …) and its kind: ``model``, ``KV``,
  ``compute``, ``output``, ``RS`` (a recurrent model's state);
* before that, the projection of its own ``--fit`` step
  (``common_memory_breakdown_print``): per device, its total and free
  memory and the MiB it expects to use for the model, the context (KV
  cache and outputs) and compute buffers.

:func:`parse_report` reads them. The buffer lines are what the server
*allocated* (two decimals of a MiB); the projection is its estimate before
loading (whole MiB). ``vram_bytes`` adds the buffers on GPU devices: the
figure that :attr:`rocm_nb.modelfiles.fit.FitPlan.estimate` ``.vram`` is
held against (docs/vulkan.md says when to trust which).

Example:
    >>> report = parse_report([
    ...     "0.01.705 I load_tensors: offloaded 31/31 layers to GPU",
    ...     "0.01.705 I load_tensors:      Vulkan0 model buffer size =    92.10 MiB",
    ...     "0.01.706 I llama_kv_cache:    Vulkan0 KV buffer size =    22.50 MiB",
    ... ])
    >>> report.offloaded_layers, report.layers, round(report.vram_bytes / 2**20, 2)
    (31, 31, 114.6)
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["DeviceBuffers", "MemoryReport", "Projection", "offload_counts", "parse_report"]

_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_BUFFER = re.compile(r"\s(\S+)\s+(model|KV|compute|output|RS) buffer size =\s*([\d.]+) MiB")
_PROJECTION = re.compile(
    r"common_memory_breakdown_print: \|\s+-\s+(\S+) \((.*)\)\s*\|\s*(\d+)\s*=\s*(\d+)\s*\+\s*\(\s*(\d+)\s*=\s*(\d+)"
    r"\s*\+\s*(\d+)\s*\+\s*(\d+)\s*\)\s*\+\s*(-?\d+)\s*\|")
_GPU_DEVICE = re.compile(r"^(?:Vulkan|ROCm|CUDA)\d+$")
_MIB = 2**20


def _is_gpu_device(name: str) -> bool:
    """Whether a buffer's device name is a GPU device (``Vulkan0``, ``ROCm1``, ``CUDA0``), not host memory."""
    return bool(_GPU_DEVICE.match(name))


def offload_counts(log: str) -> tuple[int, int] | None:
    """(layers offloaded, layers) from llama-server's ``offloaded N/M layers to GPU`` (logged at ``-lv 4``).

    A CPU build says it too (its "GPU" is the CPU): :attr:`MemoryReport.gpu_devices` tells them apart.

    Example:
        >>> offload_counts("load_tensors: offloaded 31/31 layers to GPU"), offload_counts("nothing")
        ((31, 31), None)
    """
    match = _OFFLOADED.search(log)
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass(frozen=True)
class DeviceBuffers:
    """The buffers a server allocated on one device (bytes per kind: model, KV, compute, output, RS).

    Example:
        >>> DeviceBuffers("Vulkan0", (("model", 96_573_030), ("KV", 23_592_960))).total
        120165990
    """

    device: str
    buffers: tuple[tuple[str, int], ...]

    def bytes_of(self, kind: str) -> int:
        """The bytes of one kind of buffer (``model``, ``KV``, ``compute``, ``output``, ``RS``); 0 if none.

        Example:
            >>> DeviceBuffers("Vulkan0", (("model", 5),)).bytes_of("KV")
            0
        """
        return sum(size for name, size in self.buffers if name == kind)

    @property
    def total(self) -> int:
        """All of this device's buffers, in bytes."""
        return sum(size for _, size in self.buffers)


@dataclass(frozen=True)
class Projection:
    """One device's row of the server's own memory projection (``--fit``), converted from MiB to bytes.

    Example:
        >>> Projection("Vulkan0", "llvmpipe", 2048 << 20, 2048 << 20, 126 << 20, 92 << 20, 22 << 20, 12 << 20).self
        132120576
    """

    device: str
    description: str
    total: int
    free: int
    self: int
    model: int
    context: int
    compute: int


@dataclass(frozen=True)
class MemoryReport:
    """What a server reported about its memory while loading (see the module docstring).

    ``offloaded_layers``/``layers`` are ``None`` when the log did not say
    (log verbosity below 4, or a server that has not loaded yet).

    Example:
        >>> MemoryReport(None, None, (), ()).vram_bytes
        0
    """

    offloaded_layers: int | None
    layers: int | None
    devices: tuple[DeviceBuffers, ...]
    projected: tuple[Projection, ...]

    @property
    def gpu_devices(self) -> tuple[DeviceBuffers, ...]:
        """The devices that are GPUs (their buffers are device memory)."""
        return tuple(d for d in self.devices if _is_gpu_device(d.device))

    @property
    def vram_bytes(self) -> int:
        """Bytes the server allocated on GPU devices: model, KV cache, compute and other buffers."""
        return sum(d.total for d in self.gpu_devices)

    @property
    def projected_vram_bytes(self) -> int | None:
        """What the server's own ``--fit`` projection expected on GPU devices; ``None`` without one."""
        rows = [row for row in self.projected if _is_gpu_device(row.device)]
        return sum(row.self for row in rows) if rows else None

    @property
    def complete(self) -> bool:
        """Whether the load's report is all there: the offload line and at least one buffer."""
        return self.offloaded_layers is not None and bool(self.devices)


def parse_report(lines: Iterable[str]) -> MemoryReport:
    """The :class:`MemoryReport` in a server's log lines (the first projection table, every buffer line).

    Example:
        >>> parse_report(["main: server is listening"]).complete
        False
    """
    offloaded = layers = None
    buffers: dict[str, list[tuple[str, int]]] = {}
    projected: list[Projection] = []
    tables = 0
    for line in lines:
        if "memory breakdown [MiB]" in line:
            tables += 1  # the first table is the projection; one printed at exit describes what was used
            continue
        row = _PROJECTION.search(line)
        if row and tables == 1:
            total, free, own, model, context, compute = (int(row.group(i)) * _MIB for i in range(3, 9))
            projected.append(Projection(row.group(1), row.group(2), total, free, own, model, context, compute))
            continue
        counts = offload_counts(line)
        if counts is not None and offloaded is None:
            offloaded, layers = counts
            continue
        buffer = _BUFFER.search(line)
        if buffer:
            buffers.setdefault(buffer.group(1), []).append((buffer.group(2), round(float(buffer.group(3)) * _MIB)))
    devices = tuple(DeviceBuffers(name, tuple(kinds)) for name, kinds in buffers.items())
    return MemoryReport(offloaded, layers, devices, tuple(projected))
