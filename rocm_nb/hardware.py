"""Which backend this machine has, its GPUs, and which of them llama-server may see.

ROCm: ``/dev/kfd`` exists and ``rocminfo`` lists a GPU agent (or, without
``rocminfo``, the KFD topology in ``/sys/class/kfd/kfd/topology/nodes`` lists a
GPU node); names and gfx targets come from ``rocminfo``, VRAM from ``rocm-smi
--showmeminfo vram --json``, failing that ``amd-smi metric --mem-usage
--json``, failing that amdgpu's sysfs files (``mem_info_vram_total`` and
``mem_info_vram_used`` of ``/sys/class/drm/card*/device``). CUDA:
``nvidia-smi --query-gpu`` answers. Otherwise the CPU. ``ROCM_NB_BACKEND``
forces a backend.

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
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

__all__ = [
    "GPU",
    "HSA_OVERRIDES",
    "Backend",
    "GpuUsage",
    "Hardware",
    "Runner",
    "describe",
    "detect",
    "gpu_usage",
    "hsa_override_for",
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

HSA_OVERRIDES: Mapping[str, str] = {
    **dict.fromkeys(("gfx1031", "gfx1032", "gfx1033", "gfx1034", "gfx1035", "gfx1036"), "10.3.0"),
    "gfx1103": "11.0.0",
}
"""gfx targets ROCm ships no kernels for that run as a sibling target: ``HSA_OVERRIDE_GFX_VERSION``.

Every RDNA2 chip shares gfx1030's instruction set and every RDNA3 chip
gfx1100's, so ``HSA_OVERRIDE_GFX_VERSION=10.3.0`` (or ``11.0.0``) makes ROCm
load the gfx1030 (gfx1100) kernels on them, as llama.cpp's docs/build.md (HIP
section, pinned sources) advises. The keys are the RDNA2/RDNA3 targets missing
from rocBLAS's supported-target lists (ROCm 6.0 to 7.0: gfx1010, gfx1012,
gfx1030, gfx1100, gfx1101, gfx1102, then gfx1150/gfx1151/gfx1200/gfx1201;
ROCm 7.1 adds gfx1103, for which the override is then merely harmless).

Example:
    >>> HSA_OVERRIDES["gfx1032"], HSA_OVERRIDES.get("gfx1100")
    ('10.3.0', None)
"""


def _target_version(arch: str) -> str:
    """The ``HSA_OVERRIDE_GFX_VERSION`` form of a target: gfx1030 → 10.3.0, gfx90a → 9.0.10."""
    digits = arch.removeprefix("gfx").split(":")[0]
    return f"{digits[:-2]}.{int(digits[-2], 16)}.{int(digits[-1], 16)}"


def _version_target(version: str) -> str:
    """The target an ``HSA_OVERRIDE_GFX_VERSION`` stands for: 10.3.0 → gfx1030."""
    major, minor, stepping = (int(part) for part in version.split("."))
    return _gfx_name(major * 10000 + minor * 100 + stepping)


def hsa_override_for(gfx_targets: Iterable[str]) -> str | None:
    """The ``HSA_OVERRIDE_GFX_VERSION`` that lets ROCm run all of these targets, if one is needed and one fits.

    ``None`` when no target needs an override, or when one override cannot
    serve them all (it applies to every GPU of the process).

    Example:
        >>> hsa_override_for(["gfx1032"]), hsa_override_for(["gfx1030", "gfx1035"]), hsa_override_for(["gfx1100"])
        ('10.3.0', '10.3.0', None)
        >>> hsa_override_for(["gfx1032", "gfx1100"]) is None  # 10.3.0 would break the gfx1100
        True
    """
    targets = [t.split(":")[0] for t in gfx_targets]
    needed = {HSA_OVERRIDES[t] for t in targets if t in HSA_OVERRIDES}
    if len(needed) != 1:
        return None
    [version] = needed
    return version if all(t in HSA_OVERRIDES or _target_version(t) == version for t in targets) else None


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
        override = hsa_override_for(self.gfx_targets)
        extra = {_version_target(override)} if override else set()
        return tuple(sorted(set(self.gfx_targets) | extra))

    def server_env(
        self, environ: Mapping[str, str] | None = None, *, hsa_override: str | None = None
    ) -> dict[str, str]:
        """Environment to add for a llama-server child (the user's own settings win).

        ``hsa_override`` is ``None`` (no override), ``"auto"`` (the one
        :func:`hsa_override_for` finds for the GPUs in use, if any) or a version
        such as ``"10.3.0"``; when it sets ``HSA_OVERRIDE_GFX_VERSION`` it says
        so with a :class:`UserWarning`, and a ``HSA_OVERRIDE_GFX_VERSION``
        already in ``environ`` is kept.

        Example:
            >>> hw = Hardware("rocm", (), "0", ())
            >>> hw.server_env({}), hw.server_env({"HIP_VISIBLE_DEVICES": "1"})
            ({'HIP_VISIBLE_DEVICES': '0'}, {})
        """
        env = os.environ if environ is None else environ
        result = {}
        if self.backend == "rocm" and self.visible_devices is not None and not (
            "HIP_VISIBLE_DEVICES" in env or "ROCR_VISIBLE_DEVICES" in env
        ):
            result["HIP_VISIBLE_DEVICES"] = self.visible_devices
        if hsa_override is None:
            return result
        version = hsa_override_for(self.gfx_targets) if hsa_override == "auto" else hsa_override
        if hsa_override != "auto" and not re.fullmatch(r"\d+\.\d+\.\d+", hsa_override):
            raise ValueError(f"hsa_override={hsa_override!r} is not a gfx version such as '10.3.0'; "
                             "use 'auto', a version like '10.3.0' or '11.0.0', or None")
        if version is None or self.backend != "rocm":
            return result
        if "HSA_OVERRIDE_GFX_VERSION" in env:
            warnings.warn(f"HSA_OVERRIDE_GFX_VERSION={env['HSA_OVERRIDE_GFX_VERSION']} from your environment is "
                          f"kept for llama-server; hsa_override={hsa_override!r} is ignored", stacklevel=3)
        else:
            result["HSA_OVERRIDE_GFX_VERSION"] = version
            warnings.warn(f"HSA_OVERRIDE_GFX_VERSION={version} set for llama-server only: ROCm runs "
                          f"{', '.join(self.gfx_targets) or 'the GPU'} as {_version_target(version)} "
                          "(pass hsa_override=None to turn this off)", stacklevel=3)
        return result


@dataclass(frozen=True)
class GpuUsage:
    """One GPU's memory and load right now, from :func:`gpu_usage` (``None``: not known).

    Example:
        >>> GpuUsage(0, "AMD Radeon RX 7900 GRE", 2**30, 16 * 2**30, 42).busy_percent
        42
    """

    index: int
    name: str
    vram_used: int | None
    vram_total: int | None
    busy_percent: int | None


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
    kfd_node: int | None = None
    """rocminfo's ``Internal Node ID``: the KFD topology node of this agent."""
    bdf: int | None = None
    """rocminfo's ``BDFID``: the PCI bus/device/function, packed like KFD's ``location_id``."""


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
            kfd_node=_int(fields.get("Internal Node ID")),
            bdf=_int(fields.get("BDFID")),
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


def parse_nvidia_usage(text: str) -> list[GpuUsage]:
    """Usage from ``nvidia-smi --query-gpu=index,name,memory.used,memory.total,utilization.gpu
    --format=csv,noheader,nounits`` (memory in MiB; ``[N/A]`` becomes ``None``).

    Example:
        >>> parse_nvidia_usage("0, NVIDIA H100 80GB HBM3, 4, 81559, 0\\n")[0].vram_total
        85520809984
    """
    usage = []
    for row in csv.reader(io.StringIO(text)):
        cells = [c.strip() for c in row]
        index = _int(cells[0]) if cells else None
        if len(cells) < 5 or index is None:
            continue
        used, total = _int(cells[2]), _int(cells[3])
        usage.append(GpuUsage(index, cells[1], None if used is None else used * 2**20,
                              None if total is None else total * 2**20, _int(cells[4])))
    return usage


# -- sysfs: amdgpu cards and the KFD topology ------------------------------------------------

_AMD_VENDOR = 0x1002
_KFD_NODES = Path("sys/class/kfd/kfd/topology/nodes")
_DRM = Path("sys/class/drm")
_NVIDIA_USAGE = ("nvidia-smi", "--query-gpu=index,name,memory.used,memory.total,utilization.gpu",
                 "--format=csv,noheader,nounits")


def _read(path: Path) -> str | None:
    """A sysfs file's text, or ``None``: files vanish when a device unbinds, and some are root-only."""
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: Path) -> int | None:
    """A sysfs number, decimal (``17163091968``) or hexadecimal (``0x1002``)."""
    try:
        return int((_read(path) or "").strip(), 0)
    except ValueError:
        return None


def _properties(text: str) -> dict[str, int]:
    """A KFD ``properties`` file: one ``name value`` pair a line."""
    pairs = (line.split(maxsplit=1) for line in text.splitlines())
    return {pair[0]: value for pair in pairs if len(pair) == 2 and (value := _int(pair[1])) is not None}


def _gfx_name(version: int) -> str:
    """KFD's ``gfx_target_version`` as a target name: 110000 → gfx1100, 90010 → gfx90a; 0 → ``""``."""
    major, minor, stepping = version // 10000, version // 100 % 100, version % 100
    return f"gfx{major}{minor:x}{stepping:x}" if major else ""


def _bdf(location: int) -> str:
    """A packed ``bus << 8 | device << 3 | function`` as ``03:00.0``."""
    return f"{location >> 8 & 0xFF:02x}:{location >> 3 & 0x1F:02x}.{location & 0x7}"


@dataclass(frozen=True)
class _KfdNode:
    node: int
    arch: str
    pci_slot: str | None
    is_apu: bool


def _kfd_gpu_nodes(root: Path) -> dict[int, _KfdNode]:
    """The GPU nodes of the KFD topology by node number, in HIP device order."""
    try:
        numbers = sorted(int(entry.name) for entry in (root / _KFD_NODES).iterdir() if entry.name.isdigit())
    except OSError:
        return {}
    nodes = {}
    for number in numbers:
        props = _properties(_read(root / _KFD_NODES / str(number) / "properties") or "")
        if props.get("simd_count", 0) <= 0:
            continue  # a CPU node
        arch, location = _gfx_name(props.get("gfx_target_version", 0)), props.get("location_id", 0)
        nodes[number] = _KfdNode(
            node=number,
            arch=arch,
            # location_id 0 would be the host bridge, 0000:00:00.0: no address rather than a wrong one
            pci_slot=f"{props.get('domain', 0):04x}:{_bdf(location)}" if location else None,
            is_apu=arch in APU_TARGETS,
        )
    return nodes


def _amdgpu_cards(root: Path) -> dict[str, Path]:
    """PCI address → ``device`` directory of each AMD DRM card (connectors such as ``card0-DP-1`` skipped)."""
    cards = {}
    for card in sorted((root / _DRM).glob("card*")):
        device = card / "device"
        if not card.name.removeprefix("card").isdigit() or _read_int(device / "vendor") != _AMD_VENDOR:
            continue
        uevent = dict(line.partition("=")[::2] for line in (_read(device / "uevent") or "").splitlines())
        if uevent.get("PCI_SLOT_NAME"):
            cards[uevent["PCI_SLOT_NAME"].lower()] = device
    return cards


def _card_vram(device: Path) -> tuple[int | None, int | None]:
    """(total, used) VRAM in bytes from amdgpu's ``mem_info_vram_*`` (read one after the other, not atomically)."""
    return _read_int(device / "mem_info_vram_total"), _read_int(device / "mem_info_vram_used")


def _agent_slot(agent: _Agent, nodes: Mapping[int, _KfdNode], cards: Mapping[str, Path]) -> str | None:
    """The PCI address of a rocminfo agent: its KFD node's, or else the one card at its BDFID."""
    node = nodes.get(agent.kfd_node) if agent.kfd_node is not None else None
    if node is not None:
        return node.pci_slot
    if not agent.bdf:
        return None
    matches = [slot for slot in cards if slot.endswith(f":{_bdf(agent.bdf)}")]
    return matches[0] if len(matches) == 1 else None


# -- detection -------------------------------------------------------------------------------


def _detect_rocm(runner: Runner, notes: list[str], root: Path) -> tuple[GPU, ...]:
    agents = parse_rocminfo(runner(["rocminfo"]) or "")
    nodes = _kfd_gpu_nodes(root)
    if not agents and nodes and os.access(root / "dev" / "kfd", os.R_OK | os.W_OK):
        notes.append("rocminfo did not answer: the GPUs were read from the KFD topology")
        agents = [_Agent(n.arch, f"AMD {n.arch} GPU", n.arch, n.is_apu, n.node) for n in nodes.values()]
    if not agents:
        notes.append("/dev/kfd exists but rocminfo lists no GPU agent (is your user in the render group?)")
        return ()
    cards = _amdgpu_cards(root)
    slots = [_agent_slot(agent, nodes, cards) for agent in agents]
    vram = parse_rocm_smi_json(runner(["rocm-smi", "--showmeminfo", "vram", "--json"]) or "")
    if not vram:
        vram = parse_amd_smi(runner(["amd-smi", "metric", "--mem-usage", "--json"]) or "")
    if not vram:
        vram = {i: _card_vram(cards[slot]) for i, slot in enumerate(slots) if slot in cards}
    if not vram:
        notes.append("VRAM unknown: neither rocm-smi, amd-smi nor amdgpu's sysfs files answered")
    gpus = []
    for i, (agent, slot) in enumerate(zip(agents, slots, strict=True)):
        node = nodes.get(agent.kfd_node) if agent.kfd_node is not None else None
        gpus.append(GPU(i, agent.marketing_name, agent.arch or (node.arch if node else ""), "amd",
                        *vram.get(i, (None, None)), agent.is_apu or (node is not None and node.is_apu), slot))
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


def detect(
    *,
    runner: Runner = run_tool,
    environ: Mapping[str, str] | None = None,
    root: Path = Path("/"),
) -> Hardware:
    """Find the backend and GPUs of this machine.

    ``runner``, ``environ`` and ``root`` are seams: tests replay recorded
    tool outputs and fake ``/dev/kfd`` and the sysfs tree (``root/sys``).

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
        gpus = _detect_rocm(runner, notes, root)
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


def gpu_usage(
    hw_or_gpus: Hardware | Sequence[GPU], *, root: Path = Path("/"), runner: Runner = run_tool
) -> list[GpuUsage]:
    """VRAM used and total and GPU busy % of each GPU now, for live monitors.

    AMD: amdgpu's sysfs files (``gpu_busy_percent``, ``mem_info_vram_used``,
    ``mem_info_vram_total``) of the card at the GPU's PCI address: cheap enough
    to read a few times a second. NVIDIA: one ``nvidia-smi --query-gpu`` call.
    No GPU (the CPU backend): an empty list. ``root`` and ``runner`` are the
    seams of :func:`detect`.

    Example:
        >>> gpu_usage(Hardware("cpu", (), None, ()))
        []
        >>> [u.busy_percent for u in gpu_usage(detect())]  # doctest: +SKIP
        [37]
    """
    gpus = hw_or_gpus.gpus if isinstance(hw_or_gpus, Hardware) else tuple(hw_or_gpus)
    nvidia: dict[int, GpuUsage] = {}
    if any(gpu.vendor == "nvidia" for gpu in gpus):
        nvidia = {usage.index: usage for usage in parse_nvidia_usage(runner(_NVIDIA_USAGE) or "")}
    cards = _amdgpu_cards(root) if any(gpu.vendor == "amd" for gpu in gpus) else {}
    usage = []
    for gpu in gpus:
        device = cards.get(gpu.pci_slot or "")
        if gpu.vendor == "nvidia":
            usage.append(nvidia.get(gpu.index, GpuUsage(gpu.index, gpu.name, None, gpu.vram_total, None)))
        elif device is None:
            usage.append(GpuUsage(gpu.index, gpu.name, None, gpu.vram_total, None))
        else:
            total, used = _card_vram(device)
            usage.append(GpuUsage(gpu.index, gpu.name, used, total, _read_int(device / "gpu_busy_percent")))
    return usage


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
            if gpu.is_apu:
                memory += " (a carve-out of system RAM; it shares the rest of system RAM too)"
        kind = "integrated" if gpu.is_apu else gpu.vendor
        lines.append(f"GPU {gpu.index}: {gpu.name} ({gpu.arch or '?'}, {kind}) · {memory}")
    if hw.visible_devices is not None:
        lines.append(f"HIP_VISIBLE_DEVICES={hw.visible_devices} for llama-server")
    unsupported = [t for t in hw.gfx_targets if t in HSA_OVERRIDES]
    override = hsa_override_for(hw.gfx_targets)
    if override:
        lines.append(
            f"ROCm ships no kernels for {', '.join(unsupported)}, but it runs them as {_version_target(override)}: "
            f'LocalModel(..., hsa_override="auto") sets HSA_OVERRIDE_GFX_VERSION={override} for llama-server only'
        )
    elif unsupported:
        lines.append(
            f"ROCm ships no kernels for {', '.join(unsupported)}, and no one HSA_OVERRIDE_GFX_VERSION suits all of "
            f"{', '.join(hw.gfx_targets)}: set HIP_VISIBLE_DEVICES to the GPUs of one kind"
        )
    return lines + list(hw.notes)
