"""The recorded hardware trees and tool outputs in tests/fixtures/hardware (see SOURCES.md there)."""

from __future__ import annotations

import shutil
from pathlib import Path

FIXTURES = Path(__file__).parents[1] / "fixtures" / "hardware"


def sysfs_root(tmp_path: Path, name: str) -> Path:
    """A copy of a recorded sysfs tree (tests/fixtures/hardware/sysfs-*) with a /dev/kfd beside it."""
    root = tmp_path / name
    shutil.copytree(FIXTURES / name, root)
    (root / "dev").mkdir()
    (root / "dev" / "kfd").touch()
    return root
