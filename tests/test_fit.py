"""The memory estimate and the offload plan, against the real server and the real default model."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from rocm_nb import LocalModel
from rocm_nb.hardware import GPU, Hardware
from rocm_nb.modelfiles.catalog import ModelInfo, read_info
from rocm_nb.modelfiles.fit import (
    GPU_MARGIN,
    MemoryEstimate,
    check_cache_options,
    estimate,
    free_vram,
    plan,
    plan_load,
)
from rocm_nb.notebook.display import status_bundle
from tests.support.gguf_files import write_huge_gguf

MiB = 2**20
LAYERS = 31  # SmolLM2-135M: 30 repeating layers and the output layer


@pytest.fixture(scope="module")
def info(model_path: str) -> ModelInfo:
    return read_info(model_path)


def logged_mib(logs: list[str], what: str) -> float:
    """A buffer size llama-server logs while loading, such as 'CPU KV buffer size =    90.00 MiB'."""
    sizes = [float(m.group(1)) for line in logs if (m := re.search(rf"{what} size = +([0-9.]+) MiB", line))]
    assert sizes, f"llama-server logged no {what!r}"
    return sizes[-1]


@pytest.fixture(scope="module", params=[(2048, 1, None), (8192, 2, None), (4096, 1, "off")],
                ids=["ctx2048-np1", "ctx8192-np2", "ctx4096-np1-no-flash-attn"])
def loaded(request: pytest.FixtureRequest, model_path: str) -> Iterator[tuple[LocalModel, int]]:
    """A fresh server (no prompt cache yet) after one 600-token prompt (none without flash attention), and its RSS."""
    ctx, parallel, flash_attn = request.param
    with LocalModel(model_path, ctx_size=ctx, parallel=parallel, flash_attn=flash_attn,
                    extra_args=["-lv", "4"]) as model:  # -lv 4: the buffer sizes appear in the log
        if flash_attn is None:
            model.generate("Once upon a time " * 150, max_tokens=8)
        pid = model.pid
        assert pid is not None
        yield model, psutil.Process(pid).memory_info().rss


@pytest.mark.server
def test_parts_match_the_buffers_llama_server_allocates(loaded: tuple[LocalModel, int]) -> None:
    model, _ = loaded
    logs, part = model.logs(), model.fit.estimate
    assert part.weights_ram / MiB == pytest.approx(logged_mib(logs, "CPU_Mapped model buffer"), abs=0.01)
    assert part.kv_ram / MiB == pytest.approx(logged_mib(logs, "CPU KV buffer"), abs=0.01)
    logits = logged_mib(logs, "CPU  output buffer")
    assert (part.compute_ram / MiB - logits) == pytest.approx(logged_mib(logs, "CPU compute buffer"), rel=0.02)


@pytest.mark.server
def test_total_is_within_ten_percent_of_the_measured_rss(loaded: tuple[LocalModel, int]) -> None:
    model, rss = loaded
    status = model.status()
    assert status.estimate_bytes == model.fit.estimate.total and status.estimate_vram_bytes == 0
    if model.config.flash_attn == "off":
        # VRAM is allocated whole, RSS only where touched: the attention scores of a full context never are
        assert model.fit.estimate.total > rss
    else:
        assert model.fit.estimate.total == pytest.approx(rss, rel=0.10)


@pytest.mark.server
def test_status_shows_the_estimate_beside_the_measured_memory(loaded: tuple[LocalModel, int]) -> None:
    model, _ = loaded
    status = model.status()
    assert status.estimate_bytes is not None and status.rss_bytes is not None
    text = status_bundle({"m": status}, current="m", notes=[])["text/plain"]
    assert f"estimated {status.estimate_bytes / MiB:.0f} MiB, measured {status.rss_bytes / MiB:.0f} MiB" in text
    assert "VRAM estimated" not in text  # nothing on a GPU here
    on_a_gpu = replace(status, estimate_vram_bytes=3 * 2**30)
    assert "VRAM estimated 3.0 GiB" in status_bundle({"m": on_a_gpu}, current=None, notes=[])["text/html"]


@pytest.mark.server
def test_estimate_splits_weights_and_kv_by_layer(info: ModelInfo) -> None:
    by_name = {t.name: t.nbytes for t in info.tensors}
    embeddings, output_norm = by_name["token_embd.weight"], by_name["output_norm.weight"]
    cpu = estimate(info, ctx_size=4096)
    assert cpu.vram == 0 and cpu.weights_ram == sum(by_name.values())
    output_only = estimate(info, ctx_size=4096, gpu_layers=1)
    # the output layer goes first; with tied embeddings it gets its own copy of token_embd
    assert output_only.weights_vram == output_norm + embeddings
    assert output_only.kv_vram == 0 and output_only.kv_ram == cpu.kv_ram
    every = estimate(info, ctx_size=4096, gpu_layers=999)
    assert every.gpu_layers == LAYERS and every.kv_ram == 0 and every.kv_vram == cpu.kv_ram
    assert every.weights_ram == embeddings  # the input layer always stays on the host
    assert every.ram < every.vram
    vrams = [estimate(info, ctx_size=4096, gpu_layers=n).vram for n in range(LAYERS + 1)]
    assert vrams == sorted(vrams)


@pytest.mark.server
def test_kv_cache_size_rules(info: ModelInfo) -> None:
    one = estimate(info, ctx_size=4096)
    # 30 layers × (3 KV heads × 64) × (K and V) × 2 bytes of f16 per cell
    assert one.kv_ram == 30 * 192 * 2 * 2 * 4096
    assert estimate(info, ctx_size=4096, parallel=2).kv_ram == one.kv_ram  # slots split -c, they do not multiply it
    assert estimate(info, ctx_size=1000).ctx_size == 1024  # padded to 256 cells
    assert estimate(info, ctx_size=4096, parallel=3).ctx_size == 3 * 1536  # 4096/3 → 1365 → 1536 per slot
    q8 = estimate(info, ctx_size=4096, cache_type_k="q8_0", cache_type_v="q8_0")
    assert q8.kv_ram * 64 == one.kv_ram * 34  # q8_0: 34 bytes per 32 values, f16: 64
    assert estimate(info, ctx_size=4096, flash_attn="off").compute_ram > one.compute_ram


@pytest.mark.server
def test_cache_options_are_checked(info: ModelInfo) -> None:
    check_cache_options(info, flash_attn="auto", cache_type_k="q4_0", cache_type_v="q8_0")
    with pytest.raises(ValueError, match="needs flash attention"):
        check_cache_options(info, flash_attn="off", cache_type_v="q8_0")
    with pytest.raises(ValueError, match="one of f32, f16"):
        check_cache_options(info, cache_type_k="q4_k")
    with pytest.raises(ValueError, match="'on', 'off', 'auto'"):
        check_cache_options(info, flash_attn="yes")
    with pytest.raises(ValueError, match="must be positive"):
        estimate(info, ctx_size=0)


@pytest.mark.server
def test_plan_offloads_everything_when_it_fits(info: ModelInfo) -> None:
    chosen = plan(info, 8 * 2**30, ctx_size=8192)
    assert (chosen.gpu_layers, chosen.ctx_size, chosen.fits) == (LAYERS, 8192, True)
    assert f"all {LAYERS} layers" in chosen.note and "8.0 GiB of free VRAM" in str(chosen)


@pytest.mark.server
def test_plan_picks_the_largest_partial_offload_that_fits(info: ModelInfo) -> None:
    free = GPU_MARGIN + estimate(info, ctx_size=8192, gpu_layers=20).vram
    chosen = plan(info, free, ctx_size=8192)
    assert chosen.gpu_layers == 20 and chosen.fits
    assert estimate(info, ctx_size=8192, gpu_layers=21).vram > free - GPU_MARGIN
    assert f"only 20 of {LAYERS} layers" in chosen.note and "gpu_layers=20" in chosen.note


@pytest.mark.server
def test_plan_lowers_an_unchosen_context_before_dropping_layers(info: ModelInfo) -> None:
    free = GPU_MARGIN + estimate(info, ctx_size=4096, gpu_layers=LAYERS).vram
    shrunk = plan(info, free, ctx_size=8192, shrink_ctx=True)
    assert (shrunk.gpu_layers, shrunk.ctx_size) == (LAYERS, 4096)
    assert "ctx_size lowered from 8192 to 4096" in shrunk.note
    kept = plan(info, free, ctx_size=8192)  # the user chose 8192: keep it, offload fewer layers
    assert kept.ctx_size == 8192 and 0 < kept.gpu_layers < LAYERS


@pytest.mark.server
def test_plan_when_nothing_fits(info: ModelInfo) -> None:
    chosen = plan(info, GPU_MARGIN, ctx_size=2048)
    assert chosen.gpu_layers == 0 and chosen.estimate.vram == 0
    assert "none of" in chosen.note and "runs on the CPU" in chosen.note
    starved = plan(info, None, ctx_size=2048, gpu_layers=0, free_ram_bytes=50 * MiB)
    assert not starved.fits and "will probably fail" in starved.note


@pytest.mark.server
def test_a_chosen_gpu_layers_is_kept_and_checked(info: ModelInfo) -> None:
    free = GPU_MARGIN // 8
    too_many = plan(info, free, ctx_size=8192, gpu_layers=LAYERS)
    assert too_many.gpu_layers == LAYERS and not too_many.fits
    best = plan(info, free, ctx_size=8192).gpu_layers  # what auto would take, with its margin
    assert "will probably run out of memory" in too_many.note and "gpu_layers=" in too_many.note
    assert best < LAYERS
    unknown = plan(info, None, ctx_size=8192)
    assert unknown.gpu_layers == LAYERS and unknown.fits and "free VRAM unknown" in unknown.note


@pytest.mark.unit
def test_free_vram_adds_up_the_visible_gpus() -> None:
    gpus = (GPU(0, "Radeon RX 7900 XTX", "gfx1100", "amd", 24 * 2**30, 2 * 2**30, False),
            GPU(1, "Radeon RX 7900 XTX", "gfx1100", "amd", 24 * 2**30, 4 * 2**30, False),
            GPU(2, "Radeon 780M", "gfx1103", "amd", 16 * 2**30, None, True))
    assert free_vram(Hardware("rocm", gpus, "0,1", ())) == 42 * 2**30
    assert free_vram(Hardware("rocm", gpus, None, ())) is None  # the iGPU's use is unknown
    assert free_vram(Hardware("cpu", (), None, ())) is None


@pytest.mark.server
def test_plan_load_per_backend(info: ModelInfo) -> None:
    small = Hardware("rocm", (GPU(0, "Radeon RX 6600", "gfx1032", "amd", 8 * 2**30, 7 * 2**30 - 150 * MiB,
                                  False),), "0", ())
    gpu = plan_load(info, small, "rocm", ctx_size=8192, free_ram_bytes=2**30)
    assert 0 < gpu.gpu_layers < LAYERS and gpu.estimate.vram <= 150 * MiB
    cpu = plan_load(info, small, "cpu", ctx_size=8192, gpu_layers=LAYERS, free_ram_bytes=2**30)
    assert cpu.gpu_layers == 0 and "runs on the CPU" in cpu.note and "1.0 GiB of RAM is available" in cpu.note
    rpc = plan_load(info, small, "rpc", ctx_size=8192, free_ram_bytes=2**30)
    assert rpc.gpu_layers == LAYERS


@pytest.mark.server
def test_local_model_options_and_fit(model_path: str) -> None:
    model = LocalModel(model_path, ctx_size=2048, flash_attn=True, cache_type="q8_0")
    assert model.config.argv(1)[-6:] == ["--flash-attn", "on", "--cache-type-k", "q8_0", "--cache-type-v",
                                              "q8_0"]
    assert model.fit.estimate == estimate(model.info, ctx_size=2048, flash_attn="on", cache_type_k="q8_0",
                                          cache_type_v="q8_0")
    assert "runs on the CPU" in model.fit.note and isinstance(model.fit.estimate, MemoryEstimate)
    assert LocalModel(model_path).config.argv(1)[-2:] == ["--jinja", "--metrics"]  # defaults: no flags
    with pytest.raises(ValueError, match="needs flash attention"):
        LocalModel(model_path, flash_attn=False, cache_type_v="q4_0")
    with pytest.raises(ValueError, match="not both"):
        LocalModel(model_path, cache_type="q8_0", cache_type_k="f16")


@pytest.mark.server
def test_a_load_that_cannot_fit_warns_before_any_server_starts(tmp_path: Path) -> None:
    """A 40 GB model on this 24 GiB CPU machine: LocalModel says so at construction, nothing is started."""
    path = tmp_path / "huge-70b.Q4_0.gguf"
    write_huge_gguf(path)
    with pytest.warns(RuntimeWarning, match="will probably fail") as caught:
        model = LocalModel(path)
    assert caught[0].filename == __file__  # the warning points at the user's line
    assert not model.fit.fits and model.fit.estimate.ram > psutil.virtual_memory().available
    assert model.pid is None  # no server was started


@pytest.mark.server
def test_a_quantised_kv_cache_runs_on_the_real_server(model_path: str) -> None:
    with LocalModel(model_path, ctx_size=2048, cache_type_k="q8_0", cache_type_v="q8_0",
                    extra_args=["-lv", "4"]) as model:
        assert model.generate("The capital of France is", max_tokens=4, temperature=0.0).text
        assert model.fit.estimate.kv_ram / MiB == pytest.approx(logged_mib(model.logs(), "CPU KV buffer"), abs=0.01)
