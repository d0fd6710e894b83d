"""The GPU tools llama-server's machine may have, and tolerant readers of their output (bad input: empty results).

``rocminfo`` (GPU agents, in HIP device order), ``rocm-smi`` and ``amd-smi``
(VRAM), and ``nvidia-smi --query-gpu`` (GPUs, or their usage now). Each tool
runs through a :data:`Runner`, the seam tests replay recorded outputs with.

Example:
    >>> [a.arch for a in parse_rocminfo("Agent 1\\n  Name: gfx1030\\n  Device Type: GPU\\n")]
    ['gfx1030']
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rocm_nb.hardware._types import GPU, GpuUsage

__all__ = [
    "APU_TARGETS",
    "NVIDIA_GPUS",
    "NVIDIA_USAGE",
    "Agent",
    "Runner",
    "parse_amd_smi",
    "parse_int",
    "parse_nvidia_smi",
    "parse_nvidia_usage",
    "parse_rocm_smi_json",
    "parse_rocminfo",
    "run_tool",
]

Runner = Callable[[Sequence[str]], "str | None"]
"""Run a tool and return its standard output, or ``None`` when it is missing or fails."""

APU_TARGETS = frozenset({
    "gfx801", "gfx902", "gfx909", "gfx90c", "gfx1013", "gfx1033", "gfx1035", "gfx1036", "gfx1037",
    "gfx1103", "gfx1150", "gfx1151", "gfx1152", "gfx1153",
})
"""gfx targets that only ship as integrated GPUs (APUs)."""


def run_tool(argv: Sequence[str]) -> str | None:
    """Run a hardware tool for at most 10 s; ``None`` if missing, failing or hanging.

    Example:
        >>> run_tool(["true"])
        ''
        >>> run_tool(["no-such-tool-here"]) is None
        True
    """
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


@dataclass(frozen=True)
class Agent:
    """One GPU agent of ``rocminfo`` (or of the KFD topology when rocminfo does not answer).

    Example:
        >>> Agent("gfx1103", "Radeon 780M", "gfx1103", True).is_apu
        True
    """

    name: str
    marketing_name: str
    arch: str
    is_apu: bool
    kfd_node: int | None = None
    """rocminfo's ``Internal Node ID``: the KFD topology node of this agent."""
    bdf: int | None = None
    """rocminfo's ``BDFID``: the PCI bus/device/function, packed like KFD's ``location_id``."""


def parse_rocminfo(text: str) -> list[Agent]:
    """GPU agents from ``rocminfo`` output, in HIP device order (CPU agents skipped).

    Example:
        >>> text = "Agent 2\\n  Name: gfx1100\\n  Marketing Name: Radeon RX 7900 XTX\\n  Device Type: GPU\\n"
        >>> [a.arch for a in parse_rocminfo(text)]
        ['gfx1100']
    """
    agents = []
    for block in re.split(r"^\s*Agent \d+\s*$", text, flags=re.MULTILINE)[1:]:
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.strip().partition(":")
            if sep and key not in fields:
                fields[key.strip()] = value.strip()
        if fields.get("Device Type") != "GPU":
            continue
        arch = fields.get("Name", "")
        agents.append(Agent(
            name=arch,
            marketing_name=fields.get("Marketing Name", arch),
            arch=arch if arch.startswith("gfx") else "",
            is_apu="APU" in fields.get("Memory Properties", "") or arch.split(":")[0] in APU_TARGETS,
            kfd_node=parse_int(fields.get("Internal Node ID")),
            bdf=parse_int(fields.get("BDFID")),
        ))
    return agents


def parse_int(value: Any) -> int | None:
    """The leading whole number of a tool's field (``"16 MB"`` → 16), or ``None``.

    Example:
        >>> parse_int(" 81559 MiB"), parse_int("[N/A]"), parse_int(None)
        (81559, None, None)
    """
    try:
        return int(str(value).strip().split()[0])
    except (ValueError, IndexError):
        return None


def parse_rocm_smi_json(text: str) -> dict[int, tuple[int | None, int | None]]:
    """Card index → (VRAM total, VRAM used) in bytes from ``rocm-smi --showmeminfo vram --json``.

    Example:
        >>> parse_rocm_smi_json('{"card0": {"VRAM Total Memory (B)": "100", "VRAM Total Used Memory (B)": "40"}}')
        {0: (100, 40)}
    """
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    result = {}
    for card, fields in data.items() if isinstance(data, dict) else ():
        match = re.fullmatch(r"card(\d+)", card)
        if match and isinstance(fields, dict):
            result[int(match.group(1))] = (
                parse_int(fields.get("VRAM Total Memory (B)")),
                parse_int(fields.get("VRAM Total Used Memory (B)")),
            )
    return result


def _mib(field: Any) -> int | None:
    """Bytes from a number of MiB, or from amd-smi's ``{"value": …, "unit": …}``; ``None`` when not a number."""
    if isinstance(field, dict):
        value, unit = parse_int(field.get("value")), str(field.get("unit", "MB")).upper()
    else:
        value, unit = parse_int(field), "MB"
    if value is None:
        return None
    return value * {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}.get(unit, 2**20)


def parse_amd_smi(text: str) -> dict[int, tuple[int | None, int | None]]:
    """GPU index → (VRAM total, VRAM used) in bytes from ``amd-smi metric --mem-usage --json``.

    Example:
        >>> parse_amd_smi('[{"gpu": 0, "mem_usage": {"total_vram": {"value": 2, "unit": "MB"},'
        ...               ' "used_vram": {"value": 1, "unit": "MB"}}}]')
        {0: (2097152, 1048576)}
    """
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    if isinstance(data, dict):
        data = data.get("gpu_data", [data])
    result = {}
    for entry in data if isinstance(data, list) else ():
        if not isinstance(entry, dict) or parse_int(entry.get("gpu")) is None:
            continue
        usage = entry.get("mem_usage") or {}
        result[int(entry["gpu"])] = (_mib(usage.get("total_vram")), _mib(usage.get("used_vram")))
    return result


NVIDIA_GPUS = ("nvidia-smi", "--query-gpu=index,name,compute_cap,memory.total,memory.used",
               "--format=csv,noheader,nounits")
"""The ``nvidia-smi`` call :func:`parse_nvidia_smi` reads."""
NVIDIA_USAGE = ("nvidia-smi", "--query-gpu=index,name,memory.used,memory.total,utilization.gpu",
                "--format=csv,noheader,nounits")
"""The ``nvidia-smi`` call :func:`parse_nvidia_usage` reads."""


def _nvidia_rows(text: str) -> Iterator[tuple[int, list[str]]]:
    """(GPU index, the five stripped cells) of each ``nvidia-smi --query-gpu`` CSV row that has them."""
    for row in csv.reader(io.StringIO(text)):
        cells = [c.strip() for c in row]
        index = parse_int(cells[0]) if cells else None
        if len(cells) >= 5 and index is not None:
            yield index, cells


def parse_nvidia_smi(text: str) -> list[GPU]:
    """GPUs from the output of :data:`NVIDIA_GPUS` (``index,name,compute_cap,memory.total,memory.used``; MiB).

    Example:
        >>> parse_nvidia_smi("0, NVIDIA H100 80GB HBM3, 9.0, 81559, 4\\n")[0].arch
        '9.0'
    """
    return [GPU(index=index, name=cells[1], arch=cells[2], vendor="nvidia", vram_total=_mib(cells[3]),
                vram_used=_mib(cells[4]), is_apu=False) for index, cells in _nvidia_rows(text)]


def parse_nvidia_usage(text: str) -> list[GpuUsage]:
    """Usage from the output of :data:`NVIDIA_USAGE` (``index,name,memory.used,memory.total,utilization.gpu``).

    Memory is in MiB; ``[N/A]`` becomes ``None``.

    Example:
        >>> parse_nvidia_usage("0, NVIDIA H100 80GB HBM3, 4, 81559, 0\\n")[0].vram_total
        85520809984
    """
    return [GpuUsage(index, cells[1], _mib(cells[2]), _mib(cells[3]), parse_int(cells[4]), source="nvidia-smi")
            for index, cells in _nvidia_rows(text)]
