"""amdgpu's sysfs: the KFD topology's GPU nodes, the DRM cards, and the card of each rocminfo agent.

How a KFD node or rocminfo agent is tied to its card is told in
:mod:`rocm_nb.hardware`. Every path is below a ``root``, the seam tests replay
recorded trees with.

Example:
    >>> kfd_gpu_nodes(Path("/nonexistent")), amdgpu_cards(Path("/nonexistent"))
    ({}, {})
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rocm_nb.hardware._hsa import gfx_name
from rocm_nb.hardware._tools import APU_TARGETS, Agent, parse_int

__all__ = ["KfdNode", "agent_slot", "amdgpu_cards", "card_gtt", "card_vram", "kfd_gpu_nodes", "read_int"]

_AMD_VENDOR = 0x1002
_KFD_NODES = Path("sys/class/kfd/kfd/topology/nodes")
_DRM = Path("sys/class/drm")


def _read(path: Path) -> str | None:
    """A sysfs file's text, or ``None``: files vanish when a device unbinds, and some are root-only."""
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def read_int(path: Path) -> int | None:
    """A sysfs number, decimal (``17163091968``) or hexadecimal (``0x1002``)."""
    try:
        return int((_read(path) or "").strip(), 0)
    except ValueError:
        return None


def _properties(text: str) -> dict[str, int]:
    """A KFD ``properties`` file: one ``name value`` pair a line."""
    pairs = (line.split(maxsplit=1) for line in text.splitlines())
    return {pair[0]: value for pair in pairs if len(pair) == 2 and (value := parse_int(pair[1])) is not None}


def _bdf(location: int) -> str:
    """A packed ``bus << 8 | device << 3 | function`` as ``03:00.0``."""
    return f"{location >> 8 & 0xFF:02x}:{location >> 3 & 0x1F:02x}.{location & 0x7}"


@dataclass(frozen=True)
class KfdNode:
    """A GPU node of the KFD topology: its node number, gfx target and PCI address.

    Example:
        >>> KfdNode(1, "gfx1100", "0000:03:00.0", False).arch
        'gfx1100'
    """

    node: int
    arch: str
    pci_slot: str | None
    is_apu: bool


def kfd_gpu_nodes(root: Path) -> dict[int, KfdNode]:
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
        arch, location = gfx_name(props.get("gfx_target_version", 0)), props.get("location_id", 0)
        nodes[number] = KfdNode(
            node=number,
            arch=arch,
            # location_id 0 would be the host bridge, 0000:00:00.0: no address rather than a wrong one
            pci_slot=f"{props.get('domain', 0):04x}:{_bdf(location)}" if location else None,
            is_apu=arch in APU_TARGETS,
        )
    return nodes


def amdgpu_cards(root: Path) -> dict[str, Path]:
    """PCI address → ``device`` directory of each AMD DRM card (connectors such as ``card0-DP-1`` skipped)."""
    cards = {}
    for card in sorted((root / _DRM).glob("card*")):
        device = card / "device"
        if not card.name.removeprefix("card").isdigit() or read_int(device / "vendor") != _AMD_VENDOR:
            continue
        uevent = dict(line.partition("=")[::2] for line in (_read(device / "uevent") or "").splitlines())
        if uevent.get("PCI_SLOT_NAME"):
            cards[uevent["PCI_SLOT_NAME"].lower()] = device
    return cards


def card_vram(device: Path) -> tuple[int | None, int | None]:
    """(total, used) VRAM in bytes from amdgpu's ``mem_info_vram_*`` (read one after the other, not atomically)."""
    return read_int(device / "mem_info_vram_total"), read_int(device / "mem_info_vram_used")


def card_gtt(device: Path) -> tuple[int | None, int | None]:
    """(total, used) GTT in bytes from amdgpu's ``mem_info_gtt_*``: the system RAM the GPU may map.

    Example:
        >>> card_gtt(Path("/nonexistent"))
        (None, None)
    """
    return read_int(device / "mem_info_gtt_total"), read_int(device / "mem_info_gtt_used")


def agent_slot(agent: Agent, nodes: Mapping[int, KfdNode], cards: Mapping[str, Path]) -> str | None:
    """The PCI address of a rocminfo agent: its KFD node's, or else the one card at its BDFID."""
    node = nodes.get(agent.kfd_node) if agent.kfd_node is not None else None
    if node is not None:
        return node.pci_slot
    if not agent.bdf:
        return None
    matches = [slot for slot in cards if slot.endswith(f":{_bdf(agent.bdf)}")]
    return matches[0] if len(matches) == 1 else None
