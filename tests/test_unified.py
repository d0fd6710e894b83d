"""Unified memory on AMD APUs: carve-out and GTT read apart, and the plan counts GTT when it should.

The machines are recorded sysfs/KFD trees and rocminfo outputs (tests/fixtures/hardware/SOURCES.md),
with a ROCm install tree fixture beside them; the model is the real default GGUF, and a sparse GGUF as
big as a 70B Q4 model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rocm_nb.hardware import Hardware, describe, detect
from rocm_nb.hardware._unified import UNIFIED_ENV, check_unified, decide
from rocm_nb.modelfiles.catalog import ModelInfo, read_info
from rocm_nb.modelfiles.fit import GPU_MARGIN, FitPlan, free_vram, plan, plan_load
from tests.support.gguf_files import write_gguf, write_huge_gguf
from tests.support.sdist import pinned_source
from tests.support.sysfs import FIXTURES, sysfs_root

GiB = 2**30
MiB = 2**20
LAYERS = 31  # SmolLM2-135M: 30 repeating layers and the output layer
FREE_RAM = 100 * GiB


@pytest.fixture(scope="module")
def info(model_path: str) -> ModelInfo:
    return read_info(model_path)


@pytest.fixture(scope="module")
def huge(tmp_path_factory: pytest.TempPathFactory) -> ModelInfo:
    path = tmp_path_factory.mktemp("huge") / "huge-70b.Q4_0.gguf"
    write_huge_gguf(path)
    return read_info(path)


def machine(tmp_path: Path, tree: str, rocm: str | None = "rocm-tree-7.0", rocminfo: str | None = None) -> Hardware:
    """detect() on a recorded tree, rocminfo answering with a recorded output (or not at all)."""
    text = (FIXTURES / rocminfo).read_text() if rocminfo else None
    return detect(runner=lambda argv: text if argv[0] == "rocminfo" else None, environ={},
                  root=sysfs_root(tmp_path, tree, rocm))


def gtt_planned(fit: FitPlan, hw: Hardware) -> int:
    """The bytes of the plan beyond the free carve-out: what comes out of GTT, that is system RAM."""
    return max(0, fit.estimate.vram - (free_vram(hw) or 0))


@pytest.mark.unit
def test_strix_halo_is_read_from_rocminfo_and_sysfs_with_carve_out_and_gtt_apart(tmp_path: Path) -> None:
    hw = machine(tmp_path, "sysfs-strix-halo-512m", rocminfo="rocminfo-strix-halo-gfx1151.txt")
    [gpu] = hw.gpus
    assert (gpu.name, gpu.arch, gpu.is_apu, gpu.pci_slot) == (
        "AMD Radeon 8060S Graphics", "gfx1151", True, "0000:c6:00.0")
    assert (gpu.vram_total, gpu.vram_free, gpu.gtt_total, gpu.gtt_free) == (
        512 * MiB, 32 * MiB, 128 * GiB, 128 * GiB - 100 * MiB)
    assert hw.visible_devices is None and hw.rocm is not None and hw.rocm.version == (7, 0, 0)
    line = "GPU 0: AMD Radeon 8060S Graphics (gfx1151, integrated) · carve-out 0.5 / 0.5 GiB used · " \
           "GTT 0.1 / 128.0 GiB used (system RAM the GPU may map)"
    assert line in describe(hw)


@pytest.mark.unit
def test_the_default_model_goes_to_gtt_on_a_small_carve_out(tmp_path: Path, info: ModelInfo) -> None:
    """The issue's case: 32 MiB of the 512 MiB carve-out free; today's plan put every layer on the CPU."""
    hw = machine(tmp_path, "sysfs-strix-halo-512m")
    fit = plan_load(info, hw, "rocm", ctx_size=8192, free_ram_bytes=FREE_RAM)
    assert fit.gpu_layers == LAYERS and fit.fits
    assert f"all {LAYERS} layers of" in fit.note and "of free carve-out + GTT" in fit.note
    assert "AMD gfx1151 GPU (gfx1151) is integrated: ROCm 7.0.0 allocates beyond the carve-out from GTT, so the " \
           "plan counts 32 MiB of free carve-out + 99.9 GiB of GTT (127.9 GiB free, capped by the 100.0 GiB of RAM " \
           "available less the 62 MiB the load keeps in RAM, since GTT is system RAM)" in fit.note

    off = plan_load(info, hw, "rocm", ctx_size=8192, free_ram_bytes=FREE_RAM, unified_memory="off")
    assert off.gpu_layers == 0 and "fit in the 32 MiB of free carve-out" in off.note
    assert "unified_memory='off': AMD gfx1151 GPU (gfx1151) is planned on its carve-out alone" in off.note
    assert off.note.startswith(plan(info, 32 * MiB, ctx_size=8192, shrink_ctx=False, free_ram_bytes=FREE_RAM,
                                    memory="carve-out").note)


@pytest.mark.unit
@pytest.mark.parametrize(("tree", "free_ram", "layers", "layers_off"), [
    ("sysfs-strix-halo-512m", 100 * GiB, 1, 0),  # 39 GiB of weights: into GTT, or nowhere on 32 MiB
    ("sysfs-strix-halo-8g", 100 * GiB, 1, 0),
    ("sysfs-strix-halo-512m", 20 * GiB, 0, 0),  # GTT is system RAM: 20 GiB free cannot hold it
    ("sysfs-strix-point-890m", 60 * GiB, 1, 1),  # its 48 GiB carve-out holds it alone
    ("sysfs-8845hs-780m", 24 * GiB, 0, 0),
])
def test_a_large_model_uses_gtt_but_never_more_than_the_free_ram(tmp_path: Path, huge: ModelInfo, tree: str,
                                                                 free_ram: int, layers: int, layers_off: int) -> None:
    """The sparse 70B-sized GGUF (its weights are one block here, so it goes whole or not at all)."""
    hw = machine(tmp_path, tree)
    fit = plan_load(huge, hw, "rocm", ctx_size=4096, free_ram_bytes=free_ram)
    carve = free_vram(hw) or 0
    [gpu] = hw.gpus
    assert gpu.gtt_free is not None and "carve-out + GTT" in fit.note
    assert fit.gpu_layers == layers
    assert fit.estimate.vram <= carve + min(gpu.gtt_free, free_ram) - GPU_MARGIN or layers == 0
    assert gtt_planned(fit, hw) <= free_ram  # GTT is system RAM: never planned beyond what is free
    assert fit.fits == (gtt_planned(fit, hw) + fit.estimate.ram <= free_ram)
    if not fit.fits:
        assert "the load will probably fail" in fit.note

    off = plan_load(huge, hw, "rocm", ctx_size=4096, free_ram_bytes=free_ram, unified_memory="off")
    assert off.gpu_layers == layers_off and "carve-out alone" in off.note
    assert off.estimate.vram <= max(carve - GPU_MARGIN, 0) or layers_off == 0


@pytest.mark.unit
def test_the_large_carve_out_alone_holds_the_default_model(tmp_path: Path, info: ModelInfo) -> None:
    hw = machine(tmp_path, "sysfs-strix-halo-8g")
    off = plan_load(info, hw, "rocm", ctx_size=8192, free_ram_bytes=FREE_RAM, unified_memory="off")
    assert off.gpu_layers == LAYERS and "of the 7.5 GiB of free carve-out" in off.note
    on = plan_load(info, hw, "rocm", ctx_size=8192, free_ram_bytes=FREE_RAM)
    assert on.gpu_layers == LAYERS and "7.5 GiB of free carve-out + 99.9 GiB of GTT" in on.note


@pytest.mark.unit
def test_an_older_rocm_stays_on_the_carve_out_and_doctor_suggests_vulkan(tmp_path: Path, info: ModelInfo) -> None:
    hw = machine(tmp_path, "sysfs-strix-halo-512m", rocm="rocm-tree-6.2")
    auto = plan_load(info, hw, "rocm", ctx_size=8192, free_ram_bytes=FREE_RAM)
    assert auto.gpu_layers == 0 and "ROCm 6.2.2 allocates only the carve-out" in auto.note
    assert decide(hw, "rocm", "auto").env == {}
    lines = describe(hw)
    assert any(line.startswith("unified memory: ROCm 6.2.2 allocates only the carve-out of AMD gfx1151 GPU")
               and "rocm-nb server install --backend vulkan; needs Vulkan headers 1.3.272 or later" in line
               for line in lines)
    on = decide(hw, "rocm", "on")
    assert on.use_gtt and on.env == {UNIFIED_ENV: "1"}  # llama.cpp's hipMallocManaged switch
    assert plan_load(info, hw, "rocm", ctx_size=8192, free_ram_bytes=FREE_RAM, unified_memory="on").gpu_layers == LAYERS
    vulkan = plan_load(info, hw, "vulkan", ctx_size=8192, free_ram_bytes=FREE_RAM)
    assert vulkan.gpu_layers == LAYERS and "Vulkan maps carve-out + GTT" in vulkan.note
    assert decide(hw, "vulkan", "auto").env == {}
    new = machine(tmp_path / "new", "sysfs-strix-halo-512m")
    assert decide(new, "rocm", "on").env == {}  # ROCm 7.0's hipMalloc reaches GTT by itself


@pytest.mark.unit
@pytest.mark.parametrize("tree", ["sysfs-ryzen7600-rx7900gre", "sysfs-r9700-780m"])
def test_a_discrete_gpu_gets_the_same_plans_as_before(tmp_path: Path, info: ModelInfo, huge: ModelInfo,
                                                      tree: str) -> None:
    hw = machine(tmp_path, tree)
    assert hw.apus == () and all(g.gtt_total is None for g in hw.visible_gpus)
    for model, ctx in ((info, 8192), (huge, 4096)):
        for unified in ("auto", "on", "off"):
            fit = plan_load(model, hw, "rocm", ctx_size=ctx, free_ram_bytes=FREE_RAM, shrink_ctx=True,
                            unified_memory=unified)  # type: ignore[arg-type]
            assert fit == plan(model, free_vram(hw), ctx_size=ctx, shrink_ctx=True, free_ram_bytes=FREE_RAM)
    assert decide(hw, "rocm", "on").env == {} and not any("unified memory" in line for line in describe(hw))


@pytest.mark.unit
def test_unified_memory_values_are_checked() -> None:
    assert check_unified("off") == "off"
    with pytest.raises(ValueError, match=r"unified_memory='yes': use 'auto' .*, 'on' or 'off'"):
        check_unified("yes")


@pytest.mark.unit
def test_the_monitor_shows_carve_out_and_gtt_apart(tmp_path: Path) -> None:
    from rocm_nb.hardware import gpu_usage
    from rocm_nb.notebook.monitor import MonitorSample, _sections

    hw = machine(tmp_path, "sysfs-strix-halo-512m")
    [usage] = gpu_usage(hw, root=tmp_path / "sysfs-strix-halo-512m")
    assert (usage.vram_used, usage.vram_total, usage.gtt_used, usage.gtt_total) == (
        480 * MiB, 512 * MiB, 100 * MiB, 128 * GiB)
    [section] = [s for s in _sections(MonitorSample((usage,), None, False, 0.0), running=False) if s["kind"] == "gpu"]
    assert [(bar["label"], bar["text"]) for bar in section["bars"]] == [
        ("carve-out", "480 MiB / 512 MiB"), ("GTT", "100 MiB / 128.0 GiB"), ("busy", "0 %")]


@pytest.mark.unit
def test_the_library_fits_column_counts_carve_out_and_gtt(tmp_path: Path) -> None:
    from rocm_nb.modelfiles.library import models

    write_gguf(tmp_path / "mine" / "tiny.gguf", "Tiny")
    env = {"ROCM_NB_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf")}
    hw = machine(tmp_path, "sysfs-strix-halo-512m")
    library = models(tmp_path / "mine", environ=env, hardware=hw)
    assert library.headers[-1] == "fits in carve-out + GTT?"
    [note] = [n for n in library.notes if n.startswith('"fits"')]
    assert "on the integrated GPU: 32 MiB of free carve-out + " in note
    assert "of GTT (system RAM, so capped by the RAM available now)" in note
    old = machine(tmp_path / "old", "sysfs-strix-halo-512m", rocm="rocm-tree-6.2")
    assert models(tmp_path / "mine", environ=env, hardware=old).headers[-1] == "fits in VRAM?"  # the carve-out alone


@pytest.mark.unit
def test_a_rocm_builds_server_config_gets_what_unified_memory_needs(tmp_path: Path, info: ModelInfo,
                                                                   model_path: str) -> None:
    """LocalModel's planning step for a ROCm build of llama-server (none runs here: nothing is started)."""
    from rocm_nb._options import LoadOptions, plan_server
    from rocm_nb.binary import ServerBinary

    rocm_build = ServerBinary(Path("/opt/llama/llama-server"), "0.5.0", "rocm", "argument", rpc=False)
    old = machine(tmp_path, "sysfs-strix-halo-512m", rocm="rocm-tree-6.2")

    def planned(unified: str, env: dict[str, str] | None = None) -> tuple[FitPlan, dict[str, str]]:
        options = LoadOptions.of(unified_memory=unified, env=env)  # type: ignore[arg-type]
        fit, config = plan_server(info, Path(model_path), rocm_build, old, options)
        return fit, dict(config.env)

    fit, env = planned("on")
    assert env == {UNIFIED_ENV: "1"} and fit.gpu_layers == LAYERS  # llama.cpp's hipMallocManaged, ROCm before 6.4
    assert f"{UNIFIED_ENV}=1 lets ROCm 6.2.2 allocate from GTT" in fit.note
    assert planned("on", {UNIFIED_ENV: "0"})[1] == {UNIFIED_ENV: "0"}  # the user's env wins
    assert planned("auto")[1] == {} and planned("auto")[0].gpu_layers == 0  # carve-out alone, nothing set
    with pytest.raises(ValueError, match="unified_memory='always'"):
        planned("always")


@pytest.mark.unit
def test_the_unified_memory_switch_exists_for_hip_in_the_pinned_sources() -> None:
    """GGML_CUDA_ENABLE_UNIFIED_MEMORY turns llama.cpp's device allocations into hipMallocManaged on HIP."""
    source = pinned_source("ggml/src/ggml-cuda/ggml-cuda.cu")
    malloc = source[source.index("static cudaError_t ggml_cuda_device_malloc"):]
    malloc = malloc[:malloc.index("\n}\n")]
    assert f'getenv("{UNIFIED_ENV}")' in malloc and "cudaMallocManaged(ptr, size)" in malloc
    assert "#if defined(GGML_USE_HIP)" in malloc and "hipErrorNotSupported" in malloc  # falls back to hipMalloc
    assert f"`{UNIFIED_ENV}=1`" in pinned_source("docs/build.md")
