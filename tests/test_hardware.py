"""Hardware detection on recorded tool outputs (tests/fixtures/hardware/SOURCES.md) and on this machine."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from rocm_nb.hardware import (
    GPU,
    Hardware,
    describe,
    detect,
    parse_amd_smi,
    parse_nvidia_smi,
    parse_rocm_smi_json,
    parse_rocminfo,
    run_tool,
)

FIXTURES = Path(__file__).parent / "fixtures" / "hardware"
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


def test_rocminfo_apu_and_discrete() -> None:
    agents = parse_rocminfo(fixture("rocminfo-ryzen7600-rx7900gre.txt"))
    assert [(a.arch, a.marketing_name, a.is_apu) for a in agents] == [
        ("gfx1100", "AMD Radeon RX 7900 GRE", False),
        ("gfx1036", "AMD Radeon Graphics", True),
    ]


def test_rocm_smi_json_vram() -> None:
    vram = parse_rocm_smi_json(fixture("rocm-smi-r9700-780m.json"))
    assert vram == {0: (34208743424, 29225381888), 1: (4294967296, 72495104)}


def test_nvidia_smi_csv() -> None:
    [gpu] = parse_nvidia_smi(fixture("nvidia-smi-h100.csv"))
    assert (gpu.index, gpu.name, gpu.arch, gpu.vendor) == (0, "NVIDIA H100 80GB HBM3", "9.0", "nvidia")
    assert gpu.vram_total == 81559 * 2**20 and gpu.vram_used == 4 * 2**20


def test_amd_smi_json() -> None:
    text = ('[{"gpu": 0, "mem_usage": {"total_vram": {"value": 16368, "unit": "MB"},'
            ' "used_vram": {"value": 1024, "unit": "MB"}}}]')
    assert parse_amd_smi(text) == {0: (16368 * 2**20, 1024 * 2**20)}


@pytest.mark.parametrize("garbage", ["", "not json", "{", "[1, 2]", "null", "Agent 1\nDevice Type: GPU"])
def test_parsers_never_raise_on_garbage(garbage: str) -> None:
    assert parse_rocm_smi_json(garbage) == {}
    assert parse_amd_smi(garbage) == {}
    assert parse_nvidia_smi(garbage) == []
    assert isinstance(parse_rocminfo(garbage), list)


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
    assert hw.server_env({}) == {"HIP_VISIBLE_DEVICES": "0"}
    assert hw.server_env({"HIP_VISIBLE_DEVICES": "1"}) == {}  # the user's choice wins
    assert hw.server_env({"ROCR_VISIBLE_DEVICES": "0"}) == {}
    lines = describe(hw)
    assert "backend: rocm" in lines
    assert any("masked the integrated GPU" in line for line in lines)
    assert any("VRAM 1.0 / 16.0 GiB" in line for line in lines)


def test_amd_smi_is_the_fallback_for_vram(kfd_root: Path) -> None:
    amd = '[{"gpu": 0, "mem_usage": {"total_vram": {"value": 16368, "unit": "MB"}, "used_vram": {"value": 0}}}]'
    calls, run = runner_for({"rocminfo": fixture("rocminfo-ryzen7600-rx7900gre.txt"), "rocm-smi": None,
                             "amd-smi": amd})
    hw = detect(runner=run, environ={}, root=kfd_root)  # type: ignore[arg-type]
    assert hw.gpus[0].vram_total == 16368 * 2**20
    assert [c[0] for c in calls] == ["rocminfo", "rocm-smi", "amd-smi"]


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


def test_kfd_without_gpu_agents_falls_back_to_cpu(kfd_root: Path) -> None:
    _, run = runner_for({"rocminfo": fixture("rocminfo-debian-no-gpu.txt")})
    hw = detect(runner=run, environ={}, root=kfd_root)  # type: ignore[arg-type]
    assert hw.backend == "cpu"
    assert any("rocminfo lists no GPU agent" in n for n in hw.notes)


def test_nvidia_and_overrides(tmp_path: Path) -> None:
    _, run = runner_for({"nvidia-smi": fixture("nvidia-smi-h100.csv")})
    assert detect(runner=run, environ={}, root=tmp_path).backend == "cuda"  # type: ignore[arg-type]
    assert detect(runner=run, environ={"ROCM_NB_BACKEND": "vulkan"}, root=tmp_path).backend == "vulkan"  # type: ignore[arg-type]
    forced = detect(runner=run, environ={"ROCM_NB_BACKEND": "cpu"}, root=tmp_path)  # type: ignore[arg-type]
    assert forced.backend == "cpu" and forced.gpus == ()
    odd = detect(runner=run, environ={"ROCM_NB_BACKEND": "tpu"}, root=tmp_path)  # type: ignore[arg-type]
    assert odd.backend == "cuda" and any("ignored ROCM_NB_BACKEND" in n for n in odd.notes)


def test_vram_free_is_never_negative() -> None:
    gpu = GPU(0, "x", "gfx1100", "amd", vram_total=100, vram_used=120, is_apu=False)
    assert gpu.vram_free == 0
    assert Hardware("cpu", (), None, ()).gfx_targets == ()


def test_this_machine_is_cpu_and_debian_rocm_tools_are_handled(kfd_root: Path) -> None:
    """CI and the dev machines have no GPU; Debian's rocminfo/rocm-smi are installed by the Makefile."""
    hw = detect()
    assert hw.backend == "cpu" and hw.gpus == ()
    assert run_tool(["rocminfo"]) is None  # exits 1 here: no ROCk module
    assert run_tool(["rocm-smi", "--showmeminfo", "vram", "--json"]) in ("", None)
    # pretend /dev/kfd exists: the real tools still lead cleanly to the CPU
    assert detect(root=kfd_root, environ={}).backend == "cpu"
