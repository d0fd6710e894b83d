"""Hardware detection on recorded tool outputs (tests/fixtures/hardware/SOURCES.md) and on this machine."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest

from rocm_nb.hardware import GPU, GpuUsage, Hardware, describe, detect, gpu_usage, hsa_override_for
from rocm_nb.hardware._hsa import build_targets, server_env
from rocm_nb.hardware._tools import (
    parse_amd_smi,
    parse_nvidia_smi,
    parse_nvidia_usage,
    parse_rocm_smi_json,
    parse_rocminfo,
    run_tool,
)
from tests.support.sysfs import FIXTURES, sysfs_root

GIB = 2**30


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def runner_for(outputs: dict[str, str | None]) -> tuple[list[list[str]], object]:
    calls: list[list[str]] = []

    def run(argv: Sequence[str]) -> str | None:
        calls.append(list(argv))
        return outputs.get(argv[0])

    return calls, run


@pytest.fixture
def kfd_root(tmp_path: Path) -> Path:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "kfd").touch()
    return tmp_path


@pytest.mark.unit
def test_rocminfo_apu_and_discrete() -> None:
    agents = parse_rocminfo(fixture("rocminfo-ryzen7600-rx7900gre.txt"))
    assert [(a.arch, a.marketing_name, a.is_apu) for a in agents] == [
        ("gfx1100", "AMD Radeon RX 7900 GRE", False),
        ("gfx1036", "AMD Radeon Graphics", True),
    ]


@pytest.mark.unit
def test_rocm_smi_json_vram() -> None:
    vram = parse_rocm_smi_json(fixture("rocm-smi-r9700-780m.json"))
    assert vram == {0: (34208743424, 29225381888), 1: (4294967296, 72495104)}


@pytest.mark.unit
def test_nvidia_smi_csv() -> None:
    [gpu] = parse_nvidia_smi(fixture("nvidia-smi-h100.csv"))
    assert (gpu.index, gpu.name, gpu.arch, gpu.vendor) == (0, "NVIDIA H100 80GB HBM3", "9.0", "nvidia")
    assert gpu.vram_total == 81559 * 2**20 and gpu.vram_used == 4 * 2**20


@pytest.mark.unit
def test_amd_smi_json() -> None:
    text = ('[{"gpu": 0, "mem_usage": {"total_vram": {"value": 16368, "unit": "MB"},'
            ' "used_vram": {"value": 1024, "unit": "MB"}}}]')
    assert parse_amd_smi(text) == {0: (16368 * 2**20, 1024 * 2**20)}


@pytest.mark.unit
@pytest.mark.parametrize("garbage", ["", "not json", "{", "[1, 2]", "null", "Agent 1\nDevice Type: GPU"])
def test_parsers_never_raise_on_garbage(garbage: str) -> None:
    assert parse_rocm_smi_json(garbage) == {}
    assert parse_amd_smi(garbage) == {}
    assert parse_nvidia_smi(garbage) == []
    assert parse_nvidia_usage(garbage) == []
    assert isinstance(parse_rocminfo(garbage), list)


@pytest.mark.unit
def test_rocm_machine_with_an_apu_masks_the_igpu(kfd_root: Path) -> None:
    smi = ('{"card0": {"VRAM Total Memory (B)": "17163091968", "VRAM Total Used Memory (B)": "1073741824"},'
           ' "card1": {"VRAM Total Memory (B)": "536870912", "VRAM Total Used Memory (B)": "100"}}')
    _, run = runner_for({"rocminfo": fixture("rocminfo-ryzen7600-rx7900gre.txt"), "rocm-smi": smi})
    hw = detect(runner=run, environ={}, root=kfd_root)  # type: ignore[arg-type]
    assert hw.backend == "rocm"
    assert [g.arch for g in hw.gpus] == ["gfx1100", "gfx1036"]
    assert hw.gpus[0].vram_total == 17163091968 and hw.gpus[0].vram_free == 17163091968 - GIB
    assert hw.visible_devices == "0"
    assert hw.gfx_targets == ("gfx1100",)
    assert server_env(hw, {}) == {"HIP_VISIBLE_DEVICES": "0"}
    assert server_env(hw, {"HIP_VISIBLE_DEVICES": "1"}) == {}  # the user's choice wins
    assert server_env(hw, {"ROCR_VISIBLE_DEVICES": "0"}) == {}
    lines = describe(hw)
    assert "backend: rocm" in lines
    assert any("masked the integrated GPU" in line for line in lines)
    assert any("VRAM 1.0 / 16.0 GiB" in line for line in lines)


@pytest.mark.unit
def test_amd_smi_is_the_fallback_for_vram(kfd_root: Path) -> None:
    amd = '[{"gpu": 0, "mem_usage": {"total_vram": {"value": 16368, "unit": "MB"}, "used_vram": {"value": 0}}}]'
    calls, run = runner_for({"rocminfo": fixture("rocminfo-ryzen7600-rx7900gre.txt"), "rocm-smi": None,
                             "amd-smi": amd})
    hw = detect(runner=run, environ={}, root=kfd_root)  # type: ignore[arg-type]
    assert hw.gpus[0].vram_total == 16368 * 2**20
    assert [c[0] for c in calls] == ["rocminfo", "rocm-smi", "amd-smi"]


@pytest.mark.unit
def test_apu_alone_stays_visible(kfd_root: Path) -> None:
    only_apu = fixture("rocminfo-ryzen7600-rx7900gre.txt").split("*******\nAgent 2")[0] + (
        "*******\nAgent 2\n*******\n  Name:                    gfx1103\n"
        "  Marketing Name:          AMD Radeon 780M\n  Device Type:             GPU\n"
        "  Memory Properties:       APU\n"
    )
    _, run = runner_for({"rocminfo": only_apu})
    hw = detect(runner=run, environ={}, root=kfd_root)  # type: ignore[arg-type]
    assert hw.backend == "rocm" and hw.visible_devices is None and hw.gpus[0].is_apu
    assert any("only an integrated GPU" in n for n in hw.notes)


@pytest.mark.unit
def test_kfd_without_gpu_agents_falls_back_to_cpu(kfd_root: Path) -> None:
    _, run = runner_for({"rocminfo": fixture("rocminfo-debian-no-gpu.txt")})
    hw = detect(runner=run, environ={}, root=kfd_root)  # type: ignore[arg-type]
    assert hw.backend == "cpu"
    assert any("rocminfo lists no GPU agent" in n for n in hw.notes)


@pytest.mark.unit
def test_nvidia_and_overrides(tmp_path: Path) -> None:
    _, run = runner_for({"nvidia-smi": fixture("nvidia-smi-h100.csv")})
    assert detect(runner=run, environ={}, root=tmp_path).backend == "cuda"  # type: ignore[arg-type]
    # Vulkan asked for: its devices come from vulkaninfo (not installed here), never from nvidia-smi's CUDA list
    vulkan = detect(runner=run, environ={"ROCM_NB_BACKEND": "vulkan"}, root=tmp_path)  # type: ignore[arg-type]
    assert vulkan.backend == "cpu" and "backend 'vulkan' asked for, but no such GPU was found" in vulkan.notes
    forced = detect(runner=run, environ={"ROCM_NB_BACKEND": "cpu"}, root=tmp_path)  # type: ignore[arg-type]
    assert forced.backend == "cpu" and forced.gpus == ()
    odd = detect(runner=run, environ={"ROCM_NB_BACKEND": "tpu"}, root=tmp_path)  # type: ignore[arg-type]
    assert odd.backend == "cuda" and any("ignored ROCM_NB_BACKEND" in n for n in odd.notes)


@pytest.mark.unit
def test_vram_free_is_never_negative() -> None:
    gpu = GPU(0, "x", "gfx1100", "amd", vram_total=100, vram_used=120, is_apu=False)
    assert gpu.vram_free == 0
    assert Hardware("cpu", (), None, ()).gfx_targets == ()


@pytest.mark.unit
def test_this_machine_is_cpu_and_debian_rocm_tools_are_handled(kfd_root: Path) -> None:
    """CI and the dev machines have no GPU; Debian's rocminfo/rocm-smi are installed by the Makefile."""
    hw = detect()
    assert hw.backend == "cpu" and hw.gpus == ()
    assert run_tool(["rocminfo"]) is None  # exits 1 here: no ROCk module
    assert run_tool(["rocm-smi", "--showmeminfo", "vram", "--json"]) in ("", None)
    # pretend /dev/kfd exists: the real tools still lead cleanly to the CPU
    assert detect(root=kfd_root, environ={}).backend == "cpu"


RX7900GRE, RAPHAEL = "AMD Radeon RX 7900 GRE", "AMD Radeon Graphics"


@pytest.mark.unit
def test_sysfs_gives_vram_when_rocm_smi_and_amd_smi_are_absent(tmp_path: Path) -> None:
    root = sysfs_root(tmp_path, "sysfs-ryzen7600-rx7900gre")
    calls, run = runner_for({"rocminfo": fixture("rocminfo-ryzen7600-rx7900gre.txt")})
    hw = detect(runner=run, environ={}, root=root)  # type: ignore[arg-type]
    assert [c[0] for c in calls] == ["rocminfo", "rocm-smi", "amd-smi"]
    assert [(g.index, g.arch, g.pci_slot, g.is_apu) for g in hw.gpus] == [
        (0, "gfx1100", "0000:03:00.0", False),
        (1, "gfx1036", "0000:14:00.0", True),
    ]
    assert (hw.gpus[0].vram_total, hw.gpus[0].vram_used) == (17163091968, GIB)
    assert (hw.gpus[1].vram_total, hw.gpus[1].vram_used) == (512 * 2**20, 32 * 2**20)
    assert hw.visible_devices == "0"
    assert not any("VRAM unknown" in note for note in hw.notes)


@pytest.mark.unit
def test_the_kfd_topology_stands_in_for_a_missing_rocminfo(tmp_path: Path) -> None:
    root = sysfs_root(tmp_path, "sysfs-ryzen7600-rx7900gre")
    hw = detect(runner=lambda argv: None, environ={}, root=root)
    assert hw.backend == "rocm"
    assert [(g.index, g.arch, g.pci_slot, g.is_apu) for g in hw.gpus] == [
        (0, "gfx1100", "0000:03:00.0", False),
        (1, "gfx1036", "0000:14:00.0", True),  # gfx1036 only ships in APUs
    ]
    assert hw.visible_devices == "0" and hw.gfx_targets == ("gfx1100",)
    assert any("rocminfo did not answer" in note for note in hw.notes)


@pytest.mark.unit
def test_gpu_usage_reads_busy_percent_and_vram_from_sysfs(tmp_path: Path) -> None:
    root = sysfs_root(tmp_path, "sysfs-ryzen7600-rx7900gre")
    _, run = runner_for({"rocminfo": fixture("rocminfo-ryzen7600-rx7900gre.txt")})
    hw = detect(runner=run, environ={}, root=root)  # type: ignore[arg-type]
    assert gpu_usage(hw, root=root) == [
        GpuUsage(0, RX7900GRE, GIB, 17163091968, 37, source="amdgpu sysfs"),
        GpuUsage(1, RAPHAEL, 32 * 2**20, 512 * 2**20, 0, source="amdgpu sysfs"),
    ]
    card = root / "sys/class/drm/card1/device"
    (card / "gpu_busy_percent").write_text("99\n")
    (card / "mem_info_vram_used").write_text(f"{17163091968 + 4096}\n")  # read between two updates
    [now] = gpu_usage(hw.gpus[:1], root=root)
    assert now.busy_percent == 99 and now.vram_used == 17163091968 + 4096
    assert detect(runner=run, environ={}, root=root).gpus[0].vram_free == 0  # type: ignore[arg-type]
    # a GPU without a PCI address (or whose card went away) keeps what detection knew
    assert gpu_usage([GPU(0, "x", "gfx1100", "amd", 100, 1, False)], root=root) == [GpuUsage(0, "x", None, 100, None)]


@pytest.mark.unit
def test_gpu_usage_on_nvidia_and_on_the_cpu(tmp_path: Path) -> None:
    calls, run = runner_for({"nvidia-smi": fixture("nvidia-smi-usage-h100.csv")})
    [h100] = parse_nvidia_smi(fixture("nvidia-smi-h100.csv"))
    [usage] = gpu_usage([h100], runner=run, root=tmp_path)  # type: ignore[arg-type]
    assert usage == GpuUsage(0, "NVIDIA H100 80GB HBM3", 4 * 2**20, 81559 * 2**20, 0, source="nvidia-smi")
    assert calls == [["nvidia-smi", "--query-gpu=index,name,memory.used,memory.total,utilization.gpu",
                      "--format=csv,noheader,nounits"]]
    assert gpu_usage(Hardware("cpu", (), None, ()), runner=run, root=tmp_path) == []  # type: ignore[arg-type]
    assert len(calls) == 1  # nothing asked on the CPU
    _, silent = runner_for({})
    assert gpu_usage([h100], runner=silent, root=tmp_path) == [  # type: ignore[arg-type]
        GpuUsage(0, "NVIDIA H100 80GB HBM3", None, 81559 * 2**20, None)
    ]
    assert parse_nvidia_usage("0, NVIDIA H100 80GB HBM3, [N/A], 81559, [N/A]\n") == [
        GpuUsage(0, "NVIDIA H100 80GB HBM3", None, 81559 * 2**20, None, source="nvidia-smi")
    ]


@pytest.mark.unit
def test_discrete_and_apu_without_any_tool_match_what_rocm_smi_reported(tmp_path: Path) -> None:
    root = sysfs_root(tmp_path, "sysfs-r9700-780m")
    hw = detect(runner=lambda argv: None, environ={}, root=root)
    assert [(g.index, g.arch, g.pci_slot, g.is_apu) for g in hw.gpus] == [
        (0, "gfx1201", "0000:05:00.0", False),
        (1, "gfx1103", "0000:c6:00.0", True),
    ]
    # the same host's rocm-smi read the same sysfs files
    assert {g.index: (g.vram_total, g.vram_used) for g in hw.gpus} == parse_rocm_smi_json(
        fixture("rocm-smi-r9700-780m.json"))
    assert hw.visible_devices == "0" and server_env(hw, {}) == {"HIP_VISIBLE_DEVICES": "0"}
    assert [(u.index, u.busy_percent) for u in gpu_usage(hw, root=root)] == [(0, 3), (1, 0)]  # rocm-smi's "GPU use (%)"


@pytest.mark.unit
def test_cards_are_matched_by_pci_address_not_by_card_number(tmp_path: Path) -> None:
    """Card numbers change between boots (and start at 1 beside simpledrm); HIP follows the KFD nodes."""
    root = sysfs_root(tmp_path, "sysfs-r9700-780m")
    drm = root / "sys/class/drm"
    (drm / "card1").rename(drm / "card9")
    (drm / "card2").rename(drm / "card0")
    hw = detect(runner=lambda argv: None, environ={}, root=root)
    assert [(g.arch, g.vram_total) for g in hw.gpus] == [("gfx1201", 34208743424), ("gfx1103", 4 * GIB)]
    assert hw.visible_devices == "0"


@pytest.mark.unit
def test_rocminfo_bdfid_finds_the_card_when_the_kfd_topology_is_unreadable(tmp_path: Path) -> None:
    root = sysfs_root(tmp_path, "sysfs-ryzen7600-rx7900gre")
    shutil.rmtree(root / "sys/class/kfd")
    _, run = runner_for({"rocminfo": fixture("rocminfo-ryzen7600-rx7900gre.txt")})
    hw = detect(runner=run, environ={}, root=root)  # type: ignore[arg-type]
    assert [(g.pci_slot, g.vram_total) for g in hw.gpus] == [("0000:03:00.0", 17163091968),
                                                             ("0000:14:00.0", 512 * 2**20)]


@pytest.mark.unit
def test_an_apu_alone_is_used_and_its_carve_out_is_called_so(tmp_path: Path) -> None:
    root = sysfs_root(tmp_path, "sysfs-8845hs-780m")
    hw = detect(runner=lambda argv: None, environ={}, root=root)
    [gpu] = hw.gpus
    assert (gpu.arch, gpu.is_apu, gpu.pci_slot, gpu.vram_total, gpu.vram_free) == (
        "gfx1103", True, "0000:c6:00.0", 4 * GIB, 4 * GIB - 72495104)
    assert hw.visible_devices is None and server_env(hw, {}) == {}
    lines = describe(hw)
    assert any("(gfx1103, integrated) · carve-out 0.1 / 4.0 GiB used · GTT 0.1 / 30.7 GiB used" in line
               for line in lines)
    assert any("only an integrated GPU (gfx1103)" in line for line in lines)



@pytest.mark.unit
def test_an_rdna2_card_rocm_has_no_kernels_for_gets_the_override_only_when_asked(tmp_path: Path) -> None:
    """RX 6600 (gfx1032) beside a Raphael iGPU whose DRM card comes first: HIP device 0 is the RX 6600."""
    root = sysfs_root(tmp_path, "sysfs-rx6600-raphael", "rocm-tree-6.2")  # rocBLAS for gfx1030, none for gfx1032
    hw = detect(runner=lambda argv: None, environ={}, root=root)
    assert [(g.arch, g.pci_slot, g.is_apu, g.vram_total) for g in hw.gpus] == [
        ("gfx1032", "0000:03:00.0", False, 8573157376),
        ("gfx1036", "0000:14:00.0", True, 512 * 2**20),
    ]
    assert hw.visible_devices == "0" and hw.gfx_targets == ("gfx1032",)
    assert build_targets(hw) == ("gfx1030", "gfx1032")  # kernels for both: with and without the override
    lines = describe(hw)
    assert f"ROCm 6.2.2 at {root}/opt/rocm ships no rocBLAS kernels for gfx1032 but does for gfx1030: " \
           "HSA_OVERRIDE_GFX_VERSION=10.3.0 runs it as that" in lines
    assert 'LocalModel(..., hsa_override="auto") sets HSA_OVERRIDE_GFX_VERSION=10.3.0 for llama-server only' in lines

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no override asked for: nothing set, nothing said
        assert server_env(hw, {}) == {"HIP_VISIBLE_DEVICES": "0"}
    with pytest.warns(UserWarning, match=r"HSA_OVERRIDE_GFX_VERSION=10\.3\.0 set for llama-server only: ROCm runs "
                                         r"gfx1032 as gfx1030"):
        assert server_env(hw, {}, hsa_override="auto") == {"HIP_VISIBLE_DEVICES": "0",
                                                          "HSA_OVERRIDE_GFX_VERSION": "10.3.0"}
    with pytest.warns(UserWarning, match="HSA_OVERRIDE_GFX_VERSION=10.3.1 from your environment is kept"):
        assert server_env(hw, {"HSA_OVERRIDE_GFX_VERSION": "10.3.1"}, hsa_override="auto") == {
            "HIP_VISIBLE_DEVICES": "0"}
    with pytest.warns(UserWarning, match="HSA_OVERRIDE_GFX_VERSION=11.0.0 set"):
        assert server_env(hw, {}, hsa_override="11.0.0")["HSA_OVERRIDE_GFX_VERSION"] == "11.0.0"
    with pytest.raises(ValueError, match=r"'gfx1030' is not a gfx version such as '10\.3\.0'"):
        server_env(hw, {}, hsa_override="gfx1030")


@pytest.mark.unit
def test_auto_sets_nothing_where_rocm_ships_the_kernels(tmp_path: Path) -> None:
    root = sysfs_root(tmp_path, "sysfs-r9700-780m", "rocm-tree-7.0")  # gfx1201 shipped; the masked 780M does not count
    hw = detect(runner=lambda argv: None, environ={}, root=root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert server_env(hw, {}, hsa_override="auto") == {"HIP_VISIBLE_DEVICES": "0"}
    assert build_targets(hw) == ("gfx1201",)
    assert any("ships rocBLAS kernels for gfx1201: no override needed" in line for line in describe(hw))
    apu = detect(runner=lambda argv: None, environ={},
                 root=sysfs_root(tmp_path, "sysfs-8845hs-780m", "rocm-tree-7.0"))  # no gfx1103 kernels
    assert hsa_override_for(apu.gfx_targets, apu.rocm) == "11.0.0" and build_targets(apu) == ("gfx1100", "gfx1103")


@pytest.mark.unit
def test_one_override_cannot_serve_two_generations(tmp_path: Path) -> None:
    root = sysfs_root(tmp_path, "sysfs-rx6600-raphael", "rocm-tree-6.2")
    hw = detect(runner=lambda argv: None, environ={}, root=root)
    mixed = Hardware("rocm", (hw.gpus[0], GPU(1, "RX 7900 GRE", "gfx1100", "amd", None, None, False)), None, (),
                     hw.rocm)
    assert hsa_override_for(mixed.gfx_targets, hw.rocm) is None and build_targets(mixed) == ("gfx1032", "gfx1100")
    assert any("no one HSA_OVERRIDE_GFX_VERSION suits all of gfx1032, gfx1100" in line for line in describe(mixed))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert server_env(mixed, {}, hsa_override="auto") == {}


@pytest.mark.server
def test_local_model_sets_the_override_for_its_server_only(tmp_path: Path) -> None:
    """The real LocalModel (default model, real llama-server binary; nothing is started)."""
    from rocm_nb import LocalModel

    root = sysfs_root(tmp_path, "sysfs-rx6600-raphael", "rocm-tree-6.2")
    hw = detect(runner=lambda argv: None, environ={}, root=root)
    with pytest.warns(UserWarning, match="HSA_OVERRIDE_GFX_VERSION=10.3.0 set for llama-server only") as caught:
        model = LocalModel(hardware=hw, hsa_override="auto")
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert dict(model.config.env) == {"HIP_VISIBLE_DEVICES": "0", "HSA_OVERRIDE_GFX_VERSION": "10.3.0"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "HSA_OVERRIDE_GFX_VERSION" not in dict(LocalModel(hardware=hw).config.env)
    with pytest.warns(UserWarning, match="from your environment is kept"):
        mine = LocalModel(hardware=hw, hsa_override="auto", env={"HSA_OVERRIDE_GFX_VERSION": "10.3.1"})
    assert dict(mine.config.env)["HSA_OVERRIDE_GFX_VERSION"] == "10.3.1"
    model.close()
    mine.close()
