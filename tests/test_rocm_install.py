"""HSA_OVERRIDE_GFX_VERSION decided from what the installed ROCm ships, and the evidence doctor shows.

The ROCm install trees are recorded rocBLAS/hipBLASLt library folder listings (tests/fixtures/hardware/SOURCES.md).
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest

from rocm_nb.hardware import Hardware, describe, detect, hsa_override_for
from rocm_nb.hardware._hsa import build_targets, server_env
from rocm_nb.hardware._rocm_install import find_rocm, library_targets
from tests.support.sysfs import FIXTURES, sysfs_root


def halo(tmp_path: Path, rocm: str | None) -> Hardware:
    text = (FIXTURES / "rocminfo-strix-halo-gfx1151.txt").read_text()
    return detect(runner=lambda argv: text if argv[0] == "rocminfo" else None, environ={},
                  root=sysfs_root(tmp_path, "sysfs-strix-halo-512m", rocm))


@pytest.mark.unit
def test_the_install_trees_are_read_for_version_and_targets(tmp_path: Path) -> None:
    new = find_rocm(FIXTURES / "rocm-tree-7.0", {})
    assert new is not None and new.version == (7, 0, 0) and new.path == FIXTURES / "rocm-tree-7.0/opt/rocm"
    assert new.rocblas == {"gfx906", "gfx1030", "gfx1100", "gfx1101", "gfx1102", "gfx1150", "gfx1151", "gfx1200",
                           "gfx1201"}
    assert new.hipblaslt == {"gfx1151"}
    old = find_rocm(FIXTURES / "rocm-tree-6.2", {})
    assert old is not None and old.version_text == "6.2.2" and "gfx1151" not in old.rocblas and "gfx1100" in old.rocblas
    assert find_rocm(FIXTURES / "rocm-tree-7.0", {"ROCM_PATH": "/opt/rocm-6.9"}) is None  # $ROCM_PATH wins
    moved = tmp_path / "opt" / "rocm-7.0.0"
    shutil.copytree(FIXTURES / "rocm-tree-7.0/opt/rocm", moved)
    (moved / ".info" / "version").unlink()
    (tmp_path / "opt" / "rocm").symlink_to(moved)  # how ROCm installs: /opt/rocm → /opt/rocm-7.0.0
    linked = find_rocm(tmp_path, {})
    assert linked is not None and linked.version == (7, 0, 0) and linked.ships("gfx1151")


@pytest.mark.unit
def test_newer_layouts_count_too(tmp_path: Path) -> None:
    """Compressed .dat.zlib files and per-target folders, as TheRock lays out library/<arch>/ (ROCm/TheRock#7976)."""
    library = tmp_path / "opt/rocm/lib/rocblas/library"
    (library / "gfx1151").mkdir(parents=True)
    (library / "gfx1151" / "TensileLibrary_lazy_gfx1151.dat.zlib").write_text("")
    (library / "TensileLibrary_lazy_gfx1100.dat.zlib").write_text("")
    (library / "README.txt").write_text("gfx1030 is mentioned in a file that is no kernel")
    rocm = find_rocm(tmp_path, {})
    assert rocm is not None and rocm.rocblas == {"gfx1100", "gfx1151"} and rocm.version is None
    assert library_targets(["extop_gfx90a.co", "Kernels.so-000-gfx90a-xnack+.hsaco", "hipblasltExtOpLibrary.dat"]) \
        == {"gfx90a"}


@pytest.mark.unit
def test_no_override_where_rocm_ships_the_targets_kernels(tmp_path: Path) -> None:
    hw = halo(tmp_path, "rocm-tree-7.0")
    root = tmp_path / "sysfs-strix-halo-512m"
    assert hsa_override_for(hw.gfx_targets, hw.rocm) is None and build_targets(hw) == ("gfx1151",)
    lines = describe(hw)
    assert f"ROCm 7.0.0 at {root}/opt/rocm" in lines
    assert f"ROCm 7.0.0 at {root}/opt/rocm ships rocBLAS and hipBLASLt kernels for gfx1151: no override needed" in lines
    assert not any("sets HSA_OVERRIDE_GFX_VERSION" in line for line in lines)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing set, nothing said
        assert server_env(hw, {}, hsa_override="auto") == {}


@pytest.mark.unit
def test_the_family_override_where_the_targets_kernels_are_missing(tmp_path: Path) -> None:
    hw = halo(tmp_path, "rocm-tree-6.2")
    root = tmp_path / "sysfs-strix-halo-512m"
    assert hsa_override_for(hw.gfx_targets, hw.rocm) == "11.0.0" and build_targets(hw) == ("gfx1100", "gfx1151")
    lines = describe(hw)
    assert f"ROCm 6.2.2 at {root}/opt/rocm ships no rocBLAS kernels for gfx1151 but does for gfx1100: " \
           "HSA_OVERRIDE_GFX_VERSION=11.0.0 runs it as that" in lines
    assert 'LocalModel(..., hsa_override="auto") sets HSA_OVERRIDE_GFX_VERSION=11.0.0 for llama-server only' in lines
    with pytest.warns(UserWarning, match=r"HSA_OVERRIDE_GFX_VERSION=11\.0\.0 set for llama-server only: ROCm runs "
                                         "gfx1151 as gfx1100"):
        assert server_env(hw, {}, hsa_override="auto") == {"HSA_OVERRIDE_GFX_VERSION": "11.0.0"}


@pytest.mark.unit
def test_the_780m_under_rocm_7_borrows_gfx1100_and_strix_point_needs_nothing(tmp_path: Path) -> None:
    apu = detect(runner=lambda argv: None, environ={}, root=sysfs_root(tmp_path, "sysfs-8845hs-780m", "rocm-tree-7.0"))
    assert hsa_override_for(apu.gfx_targets, apu.rocm) == "11.0.0"
    assert any("ships no rocBLAS kernels for gfx1103 but does for gfx1100" in line for line in describe(apu))
    text = (FIXTURES / "rocminfo-strix-point-gfx1150.txt").read_text()
    point = detect(runner=lambda argv: text if argv[0] == "rocminfo" else None, environ={},
                   root=sysfs_root(tmp_path, "sysfs-strix-point-890m", "rocm-tree-7.0"))
    [gpu] = point.gpus
    assert (gpu.name, gpu.arch, gpu.is_apu, gpu.pci_slot) == ("AMD Radeon Graphics", "gfx1150", True, "0000:c5:00.0")
    assert hsa_override_for(point.gfx_targets, point.rocm) is None


@pytest.mark.unit
def test_without_a_rocm_tree_auto_sets_nothing_and_says_why(tmp_path: Path) -> None:
    hw = halo(tmp_path, None)
    assert hw.rocm is None and hsa_override_for(hw.gfx_targets, hw.rocm) is None
    assert any(line.startswith("no ROCm install found ($ROCM_PATH or /opt/rocm with lib/rocblas/library): cannot "
                               "tell whether it ships kernels for gfx1151") for line in describe(hw))
    assert "unified memory: AMD Radeon 8060S Graphics (gfx1151) is integrated: ROCm 6.4 and later allocate beyond " \
           "the carve-out from GTT (the installed version is unknown)" in describe(hw)
    rdna2 = detect(runner=lambda argv: None, environ={},
                   root=sysfs_root(tmp_path, "sysfs-rx6600-raphael", "rocm-tree-7.0"))
    assert any("ships no rocBLAS kernels for gfx1032 but does for gfx1030" in line for line in describe(rdna2))
