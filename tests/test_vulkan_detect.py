"""Vulkan devices of every vendor, on recorded and derived `vulkaninfo` outputs (tests/fixtures/hardware/SOURCES.md).

What is decided from them: a software device (lavapipe) is never chosen
automatically but is used when Vulkan is asked for, an AMD GPU that ROCm
cannot run gets Vulkan and the reason, `device=` picks one GPU, and the fit
plan uses the Vulkan device's free memory under a `gpu_memory=` cap.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from rocm_nb._options import LoadOptions, devices_for
from rocm_nb._units import human_bytes
from rocm_nb.binary import ServerBinary
from rocm_nb.binary._report import parse_report
from rocm_nb.binary._smoke import write_smoke_model
from rocm_nb.hardware import GPU, Hardware, describe, detect, device_names, forced_backend, select_device
from rocm_nb.hardware._hsa import server_env
from rocm_nb.hardware._tools import Runner
from rocm_nb.hardware._vulkan_devices import VULKANINFO, parse_list_devices, parse_vulkaninfo
from rocm_nb.modelfiles.catalog import read_info
from rocm_nb.modelfiles.fit import estimate, plan_load
from tests.support.sysfs import FIXTURES

pytestmark = pytest.mark.unit

MIB, GIB = 2**20, 2**30
LAVAPIPE = "llvmpipe (LLVM 15.0.6, 256 bits)"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def runner(outputs: dict[str, str | None], calls: list[list[str]] | None = None) -> Runner:
    """Replays a tool's recorded output by its first word (``None``: the tool is missing)."""
    def run(argv: Sequence[str]) -> str | None:
        if calls is not None:
            calls.append(list(argv))
        return outputs.get(Path(argv[0]).name if argv[0].startswith("/") else argv[0])
    return run


def machine(tmp_path: Path, *, render_node: bool, kfd: bool = False, rocm: str | None = None) -> Path:
    """A root with /dev/dri/renderD128 (a GPU's render node) and /dev/kfd as asked, and a ROCm tree fixture."""
    (tmp_path / "dev" / "dri").mkdir(parents=True)
    if render_node:
        (tmp_path / "dev" / "dri" / "renderD128").touch()
    if kfd:
        (tmp_path / "dev" / "kfd").touch()
    if rocm is not None:
        shutil.copytree(FIXTURES / rocm, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_lavapipe_recorded_here_is_a_software_device_with_its_heap() -> None:
    [full] = parse_vulkaninfo(fixture("vulkaninfo-debian12-lavapipe.txt"))
    assert (full.index, full.name, full.vendor, full.device_type) == (0, LAVAPIPE, "mesa", "software")
    assert (full.vram_total, full.vram_free) == (2 * GIB, 2 * GIB)  # no memory budget: the heap's whole size
    [summary] = parse_vulkaninfo(fixture("vulkaninfo-summary-debian12-lavapipe.txt"))
    assert (summary.name, summary.device_type, summary.vram_total) == (LAVAPIPE, "software", None)


def test_radv_heaps_are_counted_as_llama_cpp_counts_them() -> None:
    """Device-local heaps only; free = budget - usage, a budget above the heap's size (16 EiB) capped at the size."""
    rx580, lavapipe = parse_vulkaninfo(fixture("vulkaninfo-rx580-radv-lavapipe.txt"))
    assert (rx580.index, rx580.vendor, rx580.device_type, rx580.pci_slot) == (0, "amd", "discrete", "0000:03:00.0")
    assert rx580.vram_total == 16 * MIB + 8573157376  # the 7.98 GiB host heap is not device-local
    assert rx580.vram_free == 16 * MIB + 8117891072
    assert (lavapipe.index, lavapipe.device_type) == (1, "software")


def test_auto_detection_never_chooses_a_software_device(tmp_path: Path) -> None:
    calls: list[list[str]] = []
    run = runner({"vulkaninfo": fixture("vulkaninfo-debian12-lavapipe.txt")}, calls)
    hw = detect(runner=run, environ={}, root=machine(tmp_path, render_node=False))
    assert hw.backend == "cpu" and list(VULKANINFO) not in calls  # no render node: no GPU driver to ask
    hw = detect(runner=run, environ={}, root=machine(tmp_path / "dri", render_node=True))
    assert hw.backend == "cpu" and hw.gpus == ()
    assert (f"Vulkan device 0, {LAVAPIPE}, is never chosen automatically: it is a software device: it runs on the "
            "CPU, more slowly than llama.cpp's own CPU backend (benchmarks/README.md), so it is for trying the GPU "
            "path, not for speed; backend='vulkan' uses it") in hw.notes


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_asking_for_vulkan_uses_lavapipe_and_names_it_for_llama_cpp(tmp_path: Path, how: str) -> None:
    run = runner({"vulkaninfo": fixture("vulkaninfo-debian12-lavapipe.txt")})
    root = machine(tmp_path, render_node=False)
    hw = (detect(runner=run, environ={}, root=root, backend="vulkan") if how == "argument"
          else detect(runner=run, environ={"ROCM_NB_BACKEND": "vulkan"}, root=root))
    assert hw.backend == "vulkan" and [g.name for g in hw.visible_gpus] == [LAVAPIPE]
    assert server_env(hw, {}) == {"GGML_VK_VISIBLE_DEVICES": "0"}  # llama.cpp ignores CPU-type devices otherwise
    assert server_env(hw, {"GGML_VK_VISIBLE_DEVICES": "0"}) == {}  # the user's own setting wins
    assert any("runs on the CPU" in note for note in hw.notes)
    binary = ServerBinary(Path("llama-server"), "1", "vulkan", "cache", False)
    with pytest.warns(UserWarning, match=rf"Vulkan device 0, {re.escape(LAVAPIPE)}, is a software device .* "
                                         r"slower than the CPU backend"):
        devices_for(hw, binary, LoadOptions(), {})


def test_an_amd_gpu_rocm_cannot_run_gets_vulkan_and_doctor_says_why(tmp_path: Path) -> None:
    """An RX 580 (gfx803) under a ROCm whose rocBLAS ships no gfx803 kernels, nor a sibling's to borrow."""
    run = runner({"rocminfo": fixture("rocminfo-rx580-gfx803.txt"),
                  "vulkaninfo": fixture("vulkaninfo-rx580-radv-lavapipe.txt")})
    root = machine(tmp_path, render_node=True, kfd=True, rocm="rocm-tree-6.2")
    hw = detect(runner=run, environ={}, root=root)
    assert hw.backend == "vulkan" and [g.name for g in hw.gpus] == ["AMD Radeon RX 580 Series (RADV POLARIS10)"]
    assert hw.visible_devices is None and server_env(hw, {}) == {}  # llama.cpp's default: its discrete GPUs
    doctor = "\n".join(describe(hw))
    assert "ROCm 6.2.2 at" in doctor and "ships no rocBLAS kernels for gfx803" in doctor
    assert "use the Vulkan build (rocm-nb server install --backend vulkan)" in doctor
    assert "Vulkan 0: AMD Radeon RX 580 Series (RADV POLARIS10) (discrete, amd) · 8.0 GiB of device memory" in doctor
    assert detect(runner=run, environ={}, root=root, backend="rocm").backend == "rocm"  # asked for: kept


def test_an_amd_gpu_without_kfd_gets_vulkan(tmp_path: Path) -> None:
    run = runner({"vulkaninfo": fixture("vulkaninfo-rx580-radv-lavapipe.txt")})
    hw = detect(runner=run, environ={}, root=machine(tmp_path, render_node=True))
    assert hw.backend == "vulkan" and hw.gpus[0].vendor == "amd"
    assert any("ROCm cannot use AMD Radeon RX 580 Series (RADV POLARIS10): /dev/kfd" in n for n in describe(hw))


def test_an_intel_gpu_from_a_summary_gets_vulkan_with_memory_unknown(tmp_path: Path) -> None:
    run = runner({"vulkaninfo": fixture("vulkaninfo-summary-arc-a770.txt")})
    hw = detect(runner=run, environ={}, root=machine(tmp_path, render_node=True))
    assert [(g.name, g.vendor, g.device_type, g.vram_total) for g in hw.gpus] == [
        ("Intel(R) Arc(tm) A770 Graphics (DG2)", "intel", "discrete", None)]
    assert "device memory unknown" in describe(hw)[1]


def test_a_vulkan_servers_list_stands_in_for_a_missing_vulkaninfo(tmp_path: Path) -> None:
    listed = ("ggml_vulkan: Found 1 Vulkan devices:\nAvailable devices:\n"
              "  Vulkan0: AMD Radeon RX 6600 (RADV NAVI23) (8176 MiB, 7900 MiB free)\n")
    [gpu] = parse_list_devices(listed)
    assert (gpu.name, gpu.vram_total, gpu.vram_free) == ("AMD Radeon RX 6600 (RADV NAVI23)", 8176 * MIB, 7900 * MIB)
    server = tmp_path / "llama-server"
    run = runner({"vulkaninfo": None, "llama-server": listed})
    hw = detect(runner=run, environ={}, root=machine(tmp_path, render_node=True), vulkan_server=server)
    assert hw.backend == "vulkan" and hw.gpus == (gpu,)
    assert "Vulkan devices read from llama-server --list-devices" in hw.notes
    forced = detect(runner=runner({}), environ={}, root=machine(tmp_path / "none", render_node=False),
                    backend="vulkan")
    assert forced.backend == "cpu" and "backend 'vulkan' asked for, but no such GPU was found" in forced.notes


def test_device_picks_one_gpu_by_its_index() -> None:
    rx580, lavapipe = parse_vulkaninfo(fixture("vulkaninfo-rx580-radv-lavapipe.txt"))
    hw = Hardware("vulkan", (rx580, lavapipe), None, ())
    assert device_names(hw) == {"Vulkan0": rx580, "Vulkan1": lavapipe}
    chosen = select_device(hw, 1)
    assert chosen.visible_gpus == (lavapipe,) and device_names(chosen) == {"Vulkan0": lavapipe}
    assert server_env(chosen, {}) == {"GGML_VK_VISIBLE_DEVICES": "1"}
    with pytest.raises(ValueError, match=r"device=3 is not one of the vulkan devices: 0 \(AMD Radeon RX 580"):
        select_device(hw, 3)
    binary = ServerBinary(Path("llama-server"), "1", "vulkan", "cache", False)
    with pytest.raises(ValueError, match=r"device=0 contradicts GGML_VK_VISIBLE_DEVICES=1 in your environment"):
        devices_for(hw, binary, LoadOptions(device=0), {"GGML_VK_VISIBLE_DEVICES": "1"})
    with pytest.raises(ValueError, match=r"backend='opencl' is not one of rocm, cuda, vulkan, cpu"):
        forced_backend("opencl")  # type: ignore[arg-type]


def test_the_plan_uses_the_devices_free_memory_and_gpu_memory_caps_it(tmp_path: Path) -> None:
    """A real llama-architecture GGUF (the smoke model: 2 layers + output) planned on lavapipe's 2 GiB."""
    info = read_info(write_smoke_model(tmp_path / "smoke.gguf"))
    [lavapipe] = parse_vulkaninfo(fixture("vulkaninfo-debian12-lavapipe.txt"))
    hw = Hardware("vulkan", (lavapipe,), "0", ())
    whole = plan_load(info, hw, "vulkan", ctx_size=256, free_ram_bytes=8 * GIB)
    assert whole.gpu_layers == 3 and "of the 2.0 GiB of free VRAM" in whole.note
    two = estimate(info, ctx_size=256, gpu_layers=2).vram  # the output layer and one repeating layer
    cap = LoadOptions.of(gpu_memory=f"{two}B").gpu_memory
    part = plan_load(info, hw, "vulkan", ctx_size=256, free_ram_bytes=8 * GIB, gpu_memory=cap)
    assert (part.gpu_layers, part.estimate.vram) == (2, two)
    assert "only 2 of 3 layers" in part.note and f"gpu_memory={human_bytes(two)} allows" in part.note
    with pytest.raises(ValueError, match=r"gpu_memory='lots' is not a size"):
        LoadOptions.of(gpu_memory="lots")
    with pytest.raises(ValueError, match=r"give gpu_layers= or gpu_memory=, not both"):
        LoadOptions.of(gpu_memory="1GiB", gpu_layers=3)
    with pytest.raises(ValueError, match=r"backend='cpu' uses none"):
        LoadOptions.of(gpu_memory="1GiB", backend="cpu")
    cpu = ServerBinary(Path("llama-server"), "1", "cpu", "cache", False)
    with pytest.warns(UserWarning, match=r"gpu_memory=1 MiB has no effect: .* is a CPU build"):
        devices_for(Hardware("cpu", (), None, ()), cpu, LoadOptions.of(gpu_memory="1MiB"), {})


def test_raw_device_flags_point_to_device() -> None:
    for flag in ("-dev", "--device", "-mg", "--main-gpu"):
        with pytest.raises(ValueError, match=rf"extra_args may not contain {flag}: .*; use device= instead"):
            LoadOptions.of(extra_args=[flag, "Vulkan0"])
    with pytest.raises(ValueError, match=r"env may not set LLAMA_ARG_DEVICE: .*; use device= instead"):
        LoadOptions.of(env={"LLAMA_ARG_DEVICE": "Vulkan0"})
    with pytest.raises(ValueError, match=r"device must be an integer ≥ 0"):
        LoadOptions.of(device=-1)
    with pytest.raises(ValueError, match=r"backend='opencl' is not one of rocm, cuda, vulkan, cpu"):
        LoadOptions.of(backend="opencl")  # type: ignore[arg-type]


def test_a_gpu_without_a_live_reading_keeps_its_total_and_says_where_it_comes_from() -> None:
    from rocm_nb.hardware import gpu_usage

    [lavapipe] = parse_vulkaninfo(fixture("vulkaninfo-debian12-lavapipe.txt"))
    [usage] = gpu_usage(Hardware("vulkan", (lavapipe,), "0", ()), root=Path("/nonexistent"))
    assert (usage.vram_used, usage.vram_total, usage.source) == (None, 2 * GIB, "total from vulkaninfo")
    assert GPU(0, "x", "", "amd", None, None, False).device_type == "discrete"


def test_the_servers_own_report_is_read_from_its_log() -> None:
    """Recorded logs (tests/fixtures/server-logs/SOURCES.md): lavapipe with every layer, and the CPU build."""
    logs = FIXTURES.parent / "server-logs"
    vulkan = parse_report((logs / "vulkan-lavapipe-smollm2-lv4.log").read_text().splitlines())
    assert (vulkan.offloaded_layers, vulkan.layers) == (31, 31)
    [device] = vulkan.gpu_devices
    assert device.device == "Vulkan0"
    assert [round(device.bytes_of(kind) / MIB, 2) for kind in ("model", "KV", "compute")] == [92.10, 22.50, 12.26]
    assert vulkan.vram_bytes == device.total  # Vulkan_Host and CPU_Mapped buffers are host memory
    [projected] = vulkan.projected  # the --fit projection before loading, not the table printed at exit
    assert (projected.device, projected.description) == ("Vulkan0", LAVAPIPE)
    assert (projected.total, projected.self, projected.model, projected.context, projected.compute) == (
        2048 * MIB, 126 * MIB, 92 * MIB, 22 * MIB, 12 * MIB)
    cpu = parse_report((logs / "cpu-smollm2-lv4.log").read_text().splitlines())
    assert cpu.offloaded_layers == 31 and cpu.complete  # a CPU build says "offloaded" too: its "GPU" is the CPU
    assert cpu.gpu_devices == () and cpu.vram_bytes == 0 and cpu.projected_vram_bytes is None


def test_an_intel_integrated_gpu_is_used_only_when_asked(tmp_path: Path) -> None:
    """The Arc summary with its device type changed to integrated, as Mesa reports an Intel iGPU."""
    summary = fixture("vulkaninfo-summary-arc-a770.txt").replace("DISCRETE_GPU", "INTEGRATED_GPU")
    run = runner({"vulkaninfo": summary})
    root = machine(tmp_path, render_node=True)
    auto = detect(runner=run, environ={}, root=root)
    assert auto.backend == "cpu" and any("is never chosen automatically: it is an integrated intel GPU: rocm_nb "
                                         "keeps the CPU build there unless asked" in n for n in auto.notes)
    asked = detect(runner=run, environ={}, root=root, backend="vulkan")
    assert asked.backend == "vulkan" and asked.visible_devices is None  # llama.cpp uses integrated GPUs by itself
