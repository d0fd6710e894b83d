"""Speculative decoding: the flags it asks for, the acceptance it reports, and output it must not change."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rocm_nb import LocalModel
from rocm_nb._options import DEFAULT_SPECULATIVE, NGRAM_FLAGS, draft_spec, speculation_flags
from rocm_nb.client.completion import Completion
from rocm_nb.client.timings import Timings
from rocm_nb.hardware import GPU, Hardware
from rocm_nb.modelfiles.fit import plan_load
from rocm_nb.notebook._format import show
from rocm_nb.notebook._magic_args import LoadArgs
from rocm_nb.notebook.chat import ChatPanel
from rocm_nb.notebook.magics import parse_args
from rocm_nb.server import ServerConfig
from tests.support.decoding import REFERENCE, assert_greedy_agrees

PROMPTS = [
    "Repeat this list three times, exactly: apple, banana, cherry, damson, elderberry.",
    "Écris trois phrases sur la forêt enchantée, puis répète-les à l'identique.",  # multi-byte (accents)
    "Translate to Japanese and repeat twice: 'Good morning, the weather is lovely today.' 日本語で。",
    "Write a Python function that returns the first n Fibonacci numbers, then the same function again.",
    "Count from 1 to 40, separated by commas.",
]
"""Greedy prompts whose answers repeat themselves (so drafts are made and accepted), some with multi-byte text."""

MAX_TOKENS = 96


# -- unit: flags, parsing, the footer ---------------------------------------------------------------


@pytest.mark.unit
def test_modes_become_the_flags_llama_server_takes() -> None:
    assert speculation_flags("off", None, None) == ()
    assert speculation_flags("ngram", None, None) == NGRAM_FLAGS == ("--spec-type", "ngram-mod")
    assert speculation_flags("d.gguf", Path("/m/d.gguf"), None) == (
        "--spec-type", "draft-simple", "--spec-draft-model", "/m/d.gguf")
    assert speculation_flags("d.gguf", Path("/m/d.gguf"), 7)[-2:] == ("--spec-draft-ngl", "7")
    assert draft_spec("off") is None and draft_spec("ngram") is None and draft_spec(Path("a.gguf")) == Path("a.gguf")
    with pytest.raises(ValueError, match="'off', 'ngram', or a draft model"):
        draft_spec("")
    argv = ServerConfig(Path("s"), Path("m.gguf"), 512, speculative=NGRAM_FLAGS, extra_args=("-t", "2")).argv(1)
    assert argv[-4:] == ["--spec-type", "ngram-mod", "-t", "2"]  # before extra_args, which may override


@pytest.mark.unit
def test_timings_carry_the_draft_counts_and_stats_show_the_acceptance() -> None:
    server = {"prompt_n": 12, "prompt_ms": 30.0, "predicted_n": 64, "predicted_ms": 400.0,
              "predicted_per_second": 160.0, "cache_n": 0, "draft_n": 40, "draft_n_accepted": 30}
    timings = Timings.from_server(server)
    assert (timings.draft_tokens, timings.draft_accepted, timings.acceptance) == (40, 30, 0.75)
    stats = Completion("x", "stop", timings).stats()
    assert stats.endswith("drafts 75% accepted (30/40)"), stats
    plain = Timings.from_server({k: v for k, v in server.items() if not k.startswith("draft")})
    assert (plain.draft_tokens, plain.acceptance) == (None, None)
    assert "draft" not in Completion("x", "stop", plain).stats()
    assert Timings(1, 1.0, 1, 1.0, 1.0, draft_tokens=0, draft_accepted=0).acceptance is None


@pytest.mark.unit
def test_rocm_load_takes_the_mode_and_the_draft_layers() -> None:
    args = parse_args("rocm_load", "smollm2-135m --speculative ngram", LoadArgs)
    assert args.speculative == "ngram" and args.draft_gpu_layers is None
    args = parse_args("rocm_load", "big.gguf --speculative small.gguf --draft-gpu-layers 4", LoadArgs)
    assert (args.speculative, args.draft_gpu_layers) == ("small.gguf", 4)
    assert parse_args("rocm_load", "", LoadArgs).speculative == DEFAULT_SPECULATIVE


# -- server: real model, real llama-server ------------------------------------------------------------


@pytest.mark.server
def test_a_draft_model_is_planned_and_its_memory_counted(model_path: str) -> None:
    model = LocalModel(model_path, ctx_size=2048, speculative=model_path)
    assert model.config.speculative == ("--spec-type", "draft-simple", "--spec-draft-model", model_path)
    draft = model.fit.draft
    assert draft is not None and draft.runtime_ram == 0  # the draft runs in the same process
    assert draft.weights_ram == model.fit.estimate.weights_ram and draft.ctx_size == 2048
    assert "set aside first for the draft model" in model.fit.note
    gpu = Hardware("rocm", (GPU(0, "Radeon RX 7600", "gfx1102", "amd", 8 * 2**30, 4 * 2**30, False),), "0", ())
    with_draft = plan_load(model.info, gpu, "rocm", ctx_size=2048, draft=model.info, draft_gpu_layers=10,
                           free_ram_bytes=2**30)
    assert with_draft.draft is not None and with_draft.draft.gpu_layers == 10 and with_draft.draft.vram > 0
    with pytest.raises(ValueError, match="draft_gpu_layers needs a draft model"):
        LocalModel(model_path, draft_gpu_layers=3)
    with pytest.raises(ValueError, match="draft_gpu_layers must be an integer"):
        LocalModel(model_path, speculative=model_path, draft_gpu_layers=-1)


@pytest.fixture(scope="module")
def greedy_off(model_path: str) -> Iterator[list[Completion]]:
    """Plain greedy decoding of every prompt, with each token's alternatives (what speculation is compared with)."""
    with LocalModel(model_path, ctx_size=2048, speculative="off") as off:
        yield [off.chat([{"role": "user", "content": p}], max_tokens=MAX_TOKENS, temperature=0.0, seed=1, **REFERENCE)
               for p in PROMPTS]


@pytest.mark.server
@pytest.mark.timeout(900)  # a draft model triples the work per step, on a CPU shared with other test runs
@pytest.mark.parametrize("mode", ["ngram", "draft"])
def test_greedy_output_is_the_same_with_speculation(mode: str, model_path: str, greedy_off: list[Completion]) -> None:
    """Every shipped mode; the draft model is the model itself (the only GGUF here), so its drafts are right.

    Speculation checks the drafts as one batch, so its texts are compared with plain decoding up to a near-tie
    (tests/support/decoding.py), not character for character: on an AVX2 CPU a batch of drafts tips a near-tie
    in one of these prompts, where AVX-512 does not. The draft mode runs the first three prompts (two with
    multi-byte text): each step costs a draft pass too.
    """
    speculative, prompts = (model_path, PROMPTS[:3]) if mode == "draft" else (mode, PROMPTS)
    with LocalModel(model_path, ctx_size=2048, speculative=speculative) as model:
        replies = [model.chat([{"role": "user", "content": p}], max_tokens=MAX_TOKENS, temperature=0.0, seed=1)
                   for p in prompts]
        drafting = next((i for i, r in enumerate(replies) if r.timings is not None and r.timings.draft_tokens), 0)
        bundles: list[dict[str, str]] = []  # what %%rocm_generate shows: its footer is the last bundle's last line
        shown = show(model.chat_stream([{"role": "user", "content": prompts[drafting]}], max_tokens=MAX_TOKENS,
                                       temperature=0.0, seed=1), "text", publish=lambda b, _: bundles.append(b))
    assert_greedy_agrees([r.text for r in replies], greedy_off[:len(prompts)], model.backend, f"speculative={mode}")
    drafted = [r.timings for r in replies if r.timings is not None and r.timings.draft_tokens]
    assert drafted, f"speculative={mode} drafted nothing on prompts that repeat themselves"
    accepted = sum(t.draft_accepted or 0 for t in drafted)
    assert accepted > 0 and any("accepted" in r.stats() for r in replies)
    footer = bundles[-1]["text/plain"].splitlines()[-1]
    assert_greedy_agrees([shown.text], [greedy_off[drafting]], model.backend, f"speculative={mode}, the cell's stream")
    assert "% accepted (" in footer, footer
    assert "% accepted (" in ChatPanel._stats(shown)  # the chat panel's stats line
