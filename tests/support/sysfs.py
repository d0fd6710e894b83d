"""The recorded hardware trees and tool outputs in tests/fixtures/hardware (see SOURCES.md there)."""

from __future__ import annotations

import shutil
from pathlib import Path

FIXTURES = Path(__file__).parents[1] / "fixtures" / "hardware"


def sysfs_root(tmp_path: Path, name: str, rocm: str | None = None) -> Path:
    """A copy of a recorded sysfs tree (tests/fixtures/hardware/sysfs-*) with a /dev/kfd beside it.

    ``rocm`` names a ROCm install tree fixture (``rocm-tree-*``: its ``opt/rocm``) to put beside it.
    """
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    (root / "dev").mkdir()
    (root / "dev" / "kfd").touch()
    if rocm is not None:
        shutil.copytree(FIXTURES / rocm, root, dirs_exist_ok=True)
    return root
