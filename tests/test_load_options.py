"""One set of load options, decided before the memory plan, and a plan that matches the server that starts.

The unit tests plan synthetic GGUFs; the server tests start the real
llama-server and compare what it reports (``/props``, and the sizes it logs
at ``-lv 4``) with what ``model.fit`` planned.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from rocm_nb import LocalModel, LocalRouter
from rocm_nb._options import MEMORY_FLAGS, LoadOptions, plan_server
from rocm_nb.binary import ServerBinary
from rocm_nb.hardware import Hardware
from rocm_nb.modelfiles.catalog import read_info
from rocm_nb.server._registry import ServerRegistry
from tests.support.gguf_files import write_gguf
from tests.support.sdist import pinned_source

MiB = 2**20
BINARY = ServerBinary(Path("/opt/llama/llama-server"), "0", "cpu", "argument", rpc=False)
CPU = Hardware("cpu", (), None, ())


# -- unit: what is decided before the plan ----------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(("args", "keyword"), [
    (["--cache-type-k", "q8_0"], "cache_type_k="),
    (["-ctv", "q4_0"], "cache_type_v="),
    (["-c", "4096"], "ctx_size="),
    (["--ctx_size=4096"], "ctx_size="),  # llama-server reads --ctx_size as --ctx-size
    (["-np", "4"], "parallel="),
    (["--n-gpu-layers", "99"], "gpu_layers="),
    (["-fa", "off"], "flash_attn="),
    (["-b", "4096"], "batch_size="),
    (["--ubatch-size", "1024"], "ubatch_size="),
    (["--embeddings"], "embedding=True"),
    (["--rerank"], "reranking=True"),
    (["-md", "draft.gguf"], "speculative="),
    (["--no-kv-offload"], "gpu_layers="),
    (["-kvu"], "ctx_size= and parallel="),
])
def test_a_raw_flag_that_changes_memory_is_refused_naming_the_keyword(args: list[str], keyword: str) -> None:
    """Refused before the model is even resolved: the name below would otherwise be a ModelNotFound."""
    with pytest.raises(ValueError, match=rf"extra_args may not contain {args[0].split('=')[0].replace('_', '-')}"
                                         rf": it changes the server's memory.*use {re.escape(keyword)} instead"):
        LocalModel("no-such-model", extra_args=["-t", "2", *args])


@pytest.mark.unit
@pytest.mark.parametrize("args", [["--slot-save-path", "/tmp/slots"], ["--slot_save_path=/tmp/slots"]])
def test_a_raw_slot_save_path_is_refused_pointing_to_warm_cache(args: list[str]) -> None:
    """The saved slots' folder is rocm_nb's own (private, budgeted, checked before a restore): never a raw flag."""
    with pytest.raises(ValueError, match=r"extra_args may not contain --slot-save-path: rocm_nb keeps the prompt "
                                         r"cache in a private folder of its own \(ROCM_NB_WARM_DIR\); turn it off "
                                         r"with warm_cache=False"):
        LocalModel("no-such-model", extra_args=["-t", "2", *args])


@pytest.mark.unit
def test_a_memory_setting_in_env_is_refused_and_speed_flags_pass() -> None:
    with pytest.raises(ValueError, match=r"env may not set LLAMA_ARG_CACHE_TYPE_K: .*use cache_type_k="):
        LocalModel("no-such-model", env={"LLAMA_ARG_CACHE_TYPE_K": "q8_0"})
    options = LoadOptions.of(extra_args=["-t", "2", "-lv", "4", "--top-k", "5"], env={"LLAMA_ARG_THREADS": "2"})
    assert options.extra_args == ("-t", "2", "-lv", "4", "--top-k", "5")


@pytest.mark.unit
def test_every_refused_flag_and_variable_is_one_the_pinned_server_knows() -> None:
    """The table stays true to llama.cpp's own argument list (common/arg.cpp)."""
    source = pinned_source("common/arg.cpp")
    missing = [flag for flag in MEMORY_FLAGS if f'"{flag}"' not in source]
    assert not missing, f"not llama-server flags: {missing}"
    from rocm_nb._options import _MEMORY_ENV

    assert not [name for name in _MEMORY_ENV if f'"{name}"' not in source]


@pytest.mark.unit
def test_load_options_are_checked_once_frozen_and_normalised() -> None:
    options = LoadOptions.of(gpu_layers="auto", flash_attn=False, cache_type="q8_0", extra_args=["-t", "2"],
                             env={"B": "2", "A": "1"})
    assert (options.gpu_layers, options.flash_attn, options.cache_type_k, options.cache_type_v) == \
        (None, "off", "q8_0", "q8_0")
    assert options.env == (("A", "1"), ("B", "2")) and hash(options) == hash(dataclasses.replace(options))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.parallel = 2  # type: ignore[misc]
    for bad, message in [({"gpu_layers": -1}, "gpu_layers must be an integer ≥ 0"),
                         ({"ubatch_size": 0}, "ubatch_size must be an integer ≥ 1"),
                         ({"flash_attn": "sometimes"}, "flash_attn='sometimes' is not one of"),
                         ({"cache_type_k": "q3"}, "cache_type_k='q3' is not a KV cache type")]:
        with pytest.raises(ValueError, match=message):
            LoadOptions.of(**bad)  # type: ignore[arg-type]


@pytest.mark.unit
def test_an_embedding_server_is_planned_for_the_context_it_starts_with(tmp_path: Path) -> None:
    """LocalModel('minilm', embedding=True, parallel=4): each slot gets the trained 512, so the server has 2048."""
    [path] = write_gguf(tmp_path / "bert.gguf", "Bert", arch="bert", ctx=512)
    fit, config = plan_server(read_info(path), path, BINARY, CPU, LoadOptions.of(embedding=True, parallel=4))
    argv = config.argv(1)
    assert fit.ctx_size == fit.estimate.ctx_size == config.ctx_size == int(argv[argv.index("-c") + 1]) == 2048
    assert argv[argv.index("-ub") + 1] == argv[argv.index("-b") + 1] == "512"  # an input is one micro-batch
    assert fit.estimate.kv_ram == 0  # an encoder: llama.cpp makes no KV cache for it
    given, _ = plan_server(read_info(path), path, BINARY, CPU, LoadOptions.of(embedding=True, parallel=4,
                                                                              ctx_size=1024))
    assert given.ctx_size == 1024
    with pytest.raises(ValueError, match=r"ctx_size=4096 \(1024 per slot over parallel=4\) is beyond what bert was "
                                         r"trained for \(512\); use ctx_size=2048 or less"):
        plan_server(read_info(path), path, BINARY, CPU, LoadOptions.of(embedding=True, parallel=4, ctx_size=4096),
                    name="bert")


@pytest.mark.unit
def test_the_micro_batch_is_planned_and_passed(tmp_path: Path) -> None:
    [path] = write_gguf(tmp_path / "tiny.gguf", "Tiny", ctx=8192)
    small, _ = plan_server(read_info(path), path, BINARY, CPU, LoadOptions())
    large, config = plan_server(read_info(path), path, BINARY, CPU, LoadOptions(ubatch_size=2048, batch_size=2048))
    assert large.estimate.compute_ram > small.estimate.compute_ram
    argv = config.argv(1)
    assert argv[argv.index("-ub") + 1] == argv[argv.index("-b") + 1] == "2048"


@pytest.mark.unit
def test_the_plan_and_the_repr_name_the_model_as_the_user_did(tmp_path: Path) -> None:
    [path] = write_gguf(tmp_path / "tiny.Q8_0.gguf", "Tiny Model 8k Lc100K Mix1 Ep2", ctx=4096)
    fit, _ = plan_server(read_info(path), path, BINARY, CPU, LoadOptions(), name="tiny.Q8_0")
    assert fit.note.startswith("tiny.Q8_0 runs on the CPU")
    assert read_info(path).summary("tiny.Q8_0").startswith("tiny.Q8_0 · llama")
    assert read_info(path).summary("tiny.Q8_0").endswith('GGUF name "Tiny Model 8k Lc100K Mix1 Ep2"')


# -- the real server: the plan and what it allocates agree ------------------------------------


def logged(logs: list[str], pattern: str) -> list[float]:
    """Every number llama-server logged after ``pattern`` (at -lv 4), such as 'CPU KV buffer size = 90.00 MiB'."""
    return [float(m.group(1)) for line in logs if (m := re.search(pattern + r" += +([0-9.]+)", line))]


@pytest.mark.server
@pytest.mark.parametrize(("model", "kwargs"), [
    ("smollm2-135m", {"ctx_size": 4096, "parallel": 2}),
    ("minilm", {"embedding": True, "parallel": 4}),
    ("smollm2-135m", {"embedding": True, "pooling": "last", "parallel": 2, "ctx_size": 2048}),
    ("smollm2-135m", {"ctx_size": 2048, "parallel": 2, "cache_type_k": "q8_0"}),
], ids=["chat", "minilm-embedding-np4", "decoder-embedding-np2", "q8_0-k-cache"])
def test_the_plan_agrees_with_the_context_and_buffers_of_the_real_server(model: str, kwargs: dict[str, Any]) -> None:
    with LocalModel(model, extra_args=["-lv", "4"], registry=ServerRegistry(), **kwargs) as loaded:
        fit, parallel = loaded.fit, loaded.load_options.parallel
        props = loaded.props()
        assert props["total_slots"] == parallel
        assert props["default_generation_settings"]["n_ctx"] * parallel == fit.ctx_size == fit.estimate.ctx_size
        logs = loaded.logs()
        assert logged(logs, r"llama_context: n_ctx") == [fit.ctx_size]
        assert logged(logs, r"llama_context: n_ctx_seq") == [fit.ctx_size // parallel]
        assert logged(logs, r"llama_context: n_ubatch") == [min(loaded.config.ubatch_size or 512,
                                                                loaded.config.batch_size or 2048)]
        kv = logged(logs, r"CPU KV buffer size")  # logged to two decimals; an encoder logs none
        assert kv == ([pytest.approx(fit.estimate.kv_ram / MiB, abs=0.01)] if fit.estimate.kv_ram else [])
        compute = logged(logs, r"CPU compute buffer size")[-1] + logged(logs, r"CPU  output buffer size")[-1]
        assert fit.estimate.compute_ram / MiB == pytest.approx(compute, rel=0.1 if model == "minilm" else 0.02)


@pytest.mark.server
def test_a_router_plans_its_children_as_local_model_plans_a_model(model_path: str) -> None:
    """One source for the defaults: the context and layers a LocalModel gets (nothing starts here)."""
    alone = LocalModel(model_path)
    router = LocalRouter([model_path], registry=ServerRegistry())
    try:
        assert (router.config.ctx_size, router.config.gpu_layers) == (alone.config.ctx_size, alone.config.gpu_layers)
        [(name, fit)] = router.fits.items()
        assert name == alone.name == Path(model_path).stem and fit.estimate == alone.fit.estimate
        with pytest.raises(ValueError, match=r"extra_args may not contain -c: .*use ctx_size= instead"):
            LocalRouter([model_path], extra_args=["-c", "512"])
    finally:
        router.close()
        alone.close()


@pytest.mark.unit
def test_a_router_plans_the_models_its_server_will_find(tmp_path: Path) -> None:
    """The pinned router's own listing: files and sub-folders, companions left out (common/preset.cpp)."""
    from rocm_nb.router import _scan

    for name in ("chat.gguf", "mmproj-chat.gguf", "mtp-chat.gguf", "big/big-00001-of-00002.gguf",
                 "big/big-00002-of-00002.gguf", "vision/model.gguf", "vision/mmproj-model.gguf", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    assert {name: model for name, (_, model) in _scan(tmp_path).items()} == {
        "chat": tmp_path / "chat.gguf", "big": tmp_path / "big/big-00001-of-00002.gguf",
        "vision": tmp_path / "vision/model.gguf"}
