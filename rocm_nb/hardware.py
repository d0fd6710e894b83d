"""Which backend this machine has, its GPUs, and which of them llama-server may see.

ROCm: ``/dev/kfd`` exists and ``rocminfo`` lists a GPU agent; names and gfx
targets come from ``rocminfo``, VRAM from ``rocm-smi --showmeminfo vram
--json`` or, failing that, ``amd-smi metric --mem-usage --json``. CUDA:
``nvidia-smi --query-gpu`` answers. Otherwise the CPU. ``ROCM_NB_BACKEND``
forces a backend.

An APU's integrated GPU crashes llama-server's ROCm backend when a discrete
GPU is present, so only the discrete GPUs are exposed through
``HIP_VISIBLE_DEVICES``. The rule for "integrated": rocminfo reports
``Memory Properties: APU`` for the agent (ROCm 6 and later), or its gfx
target only ships in APUs (gfx1035/gfx1036/gfx1103/gfx1150/gfx1151/gfx90c…). An APU alone stays visible:
it is all the machine has. A ``HIP_VISIBLE_DEVICES`` or
``ROCR_VISIBLE_DEVICES`` set by the user always wins.

Example:
    >>> hw = detect(runner=lambda argv: None, root=Path("/nonexistent"), environ={})
    >>> hw.backend, hw.gpus
    ('cpu', ())
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = [
    "GPU",
    "Backend",
    "Hardware",
    "Runner",
    "describe",
    "detect",
    "parse_amd_smi",
    "parse_nvidia_smi",
    "parse_rocm_smi_json",
    "parse_rocminfo",
    "run_tool",
]

Backend = Literal["rocm", "cuda", "vulkan", "cpu"]
Runner = Callable[[Sequence[str]], "str | None"]
"""Run a tool and return its standard output, or ``None`` when it is missing or fails."""

APU_TARGETS = frozenset({
    "gfx801", "gfx902", "gfx909", "gfx90c", "gfx1013", "gfx1033", "gfx1035", "gfx1036", "gfx1037",
    "gfx1103", "gfx1150", "gfx1151", "gfx1152", "gfx1153",
})
"""gfx targets that only ship as integrated GPUs (APUs)."""


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

    @property
    def vram_free(self) -> int | None:
        """Free VRAM in bytes (never negative: the counters are not read atomically)."""
        if self.vram_total is None or self.vram_used is None:
            return None
        return max(0, self.vram_total - self.vram_used)


@dataclass(frozen=True)
class Hardware:
    """What :func:`detect` found.

    Example:
        >>> Hardware("cpu", (), None, ()).server_env()
        {}
    """

    backend: Backend
    gpus: tuple[GPU, ...]
    visible_devices: str | None
    notes: tuple[str, ...]

    @property
    def gfx_targets(self) -> tuple[str, ...]:
        """Sorted gfx targets of the AMD GPUs llama-server will use (for ``AMDGPU_TARGETS``)."""
        visible = None if self.visible_devices is None else set(self.visible_devices.split(","))
        return tuple(sorted({
            g.arch for g in self.gpus
            if g.vendor == "amd" and g.arch and (visible is None or str(g.index) in visible)
        }))

    def server_env(self, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment to add for a llama-server child (the user's own settings win).

        Example:
            >>> hw = Hardware("rocm", (), "0", ())
            >>> hw.server_env({}), hw.server_env({"HIP_VISIBLE_DEVICES": "1"})
            ({'HIP_VISIBLE_DEVICES': '0'}, {})
        """
        env = os.environ if environ is None else environ
        if self.backend != "rocm" or self.visible_devices is None:
            return {}
        if "HIP_VISIBLE_DEVICES" in env or "ROCR_VISIBLE_DEVICES" in env:
            return {}
        return {"HIP_VISIBLE_DEVICES": self.visible_devices}


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


# -- parsers (tolerant: bad input gives empty results) ---------------------------------------


@dataclass(frozen=True)
class _Agent:
    name: str
    marketing_name: str
    arch: str
    is_apu: bool


def parse_rocminfo(text: str) -> list[_Agent]:
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
        agents.append(_Agent(
            name=arch,
            marketing_name=fields.get("Marketing Name", arch),
            arch=arch if arch.startswith("gfx") else "",
            is_apu="APU" in fields.get("Memory Properties", "") or arch.split(":")[0] in APU_TARGETS,
        ))
    return agents


def _int(value: Any) -> int | None:
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
                _int(fields.get("VRAM Total Memory (B)")),
                _int(fields.get("VRAM Total Used Memory (B)")),
            )
    return result


def _mib(field: Any) -> int | None:
    if isinstance(field, dict):
        value, unit = _int(field.get("value")), str(field.get("unit", "MB")).upper()
    else:
        value, unit = _int(field), "MB"
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
        if not isinstance(entry, dict) or _int(entry.get("gpu")) is None:
            continue
        usage = entry.get("mem_usage") or {}
        result[int(entry["gpu"])] = (_mib(usage.get("total_vram")), _mib(usage.get("used_vram")))
    return result


def parse_nvidia_smi(text: str) -> list[GPU]:
    """GPUs from ``nvidia-smi --query-gpu=index,name,compute_cap,memory.total,memory.used
    --format=csv,noheader,nounits`` (memory in MiB).

    Example:
        >>> parse_nvidia_smi("0, NVIDIA H100 80GB HBM3, 9.0, 81559, 4\\n")[0].arch
        '9.0'
    """
    gpus = []
    for row in csv.reader(io.StringIO(text)):
        cells = [c.strip() for c in row]
        if len(cells) < 5 or _int(cells[0]) is None:
            continue
        total, used = _int(cells[3]), _int(cells[4])
        gpus.append(GPU(
            index=int(cells[0]), name=cells[1], arch=cells[2], vendor="nvidia",
            vram_total=None if total is None else total * 2**20,
            vram_used=None if used is None else used * 2**20, is_apu=False,
        ))
    return gpus


# -- detection -------------------------------------------------------------------------------


def _detect_rocm(runner: Runner, notes: list[str]) -> tuple[GPU, ...]:
    agents = parse_rocminfo(runner(["rocminfo"]) or "")
    if not agents:
        notes.append("/dev/kfd exists but rocminfo lists no GPU agent (is your user in the render group?)")
        return ()
    vram = parse_rocm_smi_json(runner(["rocm-smi", "--showmeminfo", "vram", "--json"]) or "")
    if not vram:
        vram = parse_amd_smi(runner(["amd-smi", "metric", "--mem-usage", "--json"]) or "")
    if not vram:
        notes.append("VRAM unknown: neither rocm-smi nor amd-smi answered")
    return tuple(
        GPU(i, a.marketing_name, a.arch, "amd", *vram.get(i, (None, None)), a.is_apu)
        for i, a in enumerate(agents)
    )


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


def detect(
    *,
    runner: Runner = run_tool,
    environ: Mapping[str, str] | None = None,
    root: Path = Path("/"),
) -> Hardware:
    """Find the backend and GPUs of this machine.

    ``runner``, ``environ`` and ``root`` are seams: tests replay recorded
    tool outputs and fake ``/dev/kfd``.

    Example:
        >>> detect(environ={"ROCM_NB_BACKEND": "cpu"}).backend
        'cpu'
    """
    env = os.environ if environ is None else environ
    notes: list[str] = []
    forced = env.get("ROCM_NB_BACKEND", "").strip().lower() or None
    if forced is not None and forced not in get_args(Backend):
        notes.append(f"ignored ROCM_NB_BACKEND={forced!r} (use one of {', '.join(get_args(Backend))})")
        forced = None
    if forced == "cpu":
        return Hardware("cpu", (), None, ("backend forced by ROCM_NB_BACKEND=cpu",))
    if forced in (None, "rocm") and (root / "dev" / "kfd").exists():
        gpus = _detect_rocm(runner, notes)
        if gpus:
            return Hardware("rocm", gpus, _visible(gpus, notes), tuple(notes))
    if forced in (None, "cuda", "vulkan"):
        query = "--query-gpu=index,name,compute_cap,memory.total,memory.used"
        nvidia = parse_nvidia_smi(runner(["nvidia-smi", query, "--format=csv,noheader,nounits"]) or "")
        if nvidia:
            return Hardware("vulkan" if forced == "vulkan" else "cuda", tuple(nvidia), None, tuple(notes))
    if forced is not None:
        notes.append(f"ROCM_NB_BACKEND={forced} asked for, but no such GPU was found")
    notes.append("no GPU found: llama-server runs on the CPU")
    return Hardware("cpu", (), None, tuple(notes))


def describe(hw: Hardware) -> list[str]:
    """Human-readable lines for ``rocm-nb doctor`` and ``%rocm_status``.

    Example:
        >>> describe(Hardware("cpu", (), None, ("no GPU found",)))
        ['backend: cpu', 'no GPU found']
    """
    lines = [f"backend: {hw.backend}"]
    for gpu in hw.gpus:
        memory = "VRAM unknown"
        if gpu.vram_total is not None:
            used = "?" if gpu.vram_used is None else f"{gpu.vram_used / 2**30:.1f}"
            memory = f"VRAM {used} / {gpu.vram_total / 2**30:.1f} GiB used"
        kind = "integrated" if gpu.is_apu else gpu.vendor
        lines.append(f"GPU {gpu.index}: {gpu.name} ({gpu.arch or '?'}, {kind}) · {memory}")
    if hw.visible_devices is not None:
        lines.append(f"HIP_VISIBLE_DEVICES={hw.visible_devices} for llama-server")
    return lines + list(hw.notes)
