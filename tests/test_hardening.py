"""Faults and bad input against the real server: a clear error, nothing lost, no mess."""

from __future__ import annotations

import gc
import os
import signal

import psutil
import pytest

from rocm_nb import GenerationError, LocalModel
from tests.support.decoding import REFERENCE, assert_greedy_agrees, still_serves
from tests.support.processes import gone
from tests.support.threads import run_together

pytestmark = pytest.mark.server

GREEDY = {"temperature": 0.0, "seed": 3}


def test_a_stopped_server_is_a_timeout_not_a_hang(model_path: str) -> None:
    # a silence of 5 s: far longer than a busy machine ever leaves between two tokens, short enough for a test
    m = LocalModel(model_path, ctx_size=1152, timeout=5.0).start()
    pid = m.pid
    assert pid is not None
    try:
        stream = m.stream("Once upon a time, in a faraway kingdom, there lived", max_tokens=3000, **GREEDY)
        first = next(stream)
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(GenerationError, match=r"sent nothing for 5\.0 s") as info:
            for _ in stream:
                pass
        assert info.value.partial.startswith(first)
    finally:
        os.kill(pid, signal.SIGCONT)
        m.close()
    assert gone(pid)(), "close() returns once the process is gone"


def test_a_prompt_longer_than_the_context_is_refused_clearly(model_path: str) -> None:
    with LocalModel(model_path, ctx_size=256) as m:
        with pytest.raises(GenerationError) as info:
            m.generate("word " * 600, max_tokens=8)
        assert info.value.status_code == 400
        assert "context" in str(info.value).lower()
        still_serves(m)  # the server survived


def test_a_bad_json_schema_is_refused_clearly(model: LocalModel) -> None:
    with pytest.raises(GenerationError) as info:
        model.generate("x", max_tokens=4, json_schema={"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}})
    assert info.value.status_code == 400
    assert model.health()


def test_unknown_options_and_bad_max_tokens_fail_before_any_request(model: LocalModel) -> None:
    before = model.metrics()["llamacpp:prompt_tokens_total"]
    with pytest.raises(TypeError, match="unknown option"):
        model.generate("x", temprature=0.5)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="max_tokens"):
        model.generate("x", max_tokens=0)
    with pytest.raises(ValueError, match="max_tokens"):
        model.generate("x", max_tokens=-5)
    assert model.metrics()["llamacpp:prompt_tokens_total"] == before


def test_eight_streams_on_four_slots_are_complete_and_unmixed(model_path: str) -> None:
    prompts = [f"Write the number {n} in words, then count down from it:" for n in range(10, 18)]
    with LocalModel(model_path, ctx_size=4096, parallel=4) as m:
        alone = [m.generate(p, max_tokens=20, **GREEDY, **REFERENCE) for p in prompts]

        def run(prompt: str) -> str:
            with m.stream(prompt, max_tokens=20, **GREEDY) as stream:
                text = "".join(stream)
                assert stream.completion is not None and stream.completion.finish_reason is not None
            return text

        results = run_together(*(lambda p=p: run(p) for p in prompts))
        # four slots decode in one batch: compared up to a near-tie (tests/support/decoding.py)
        assert_greedy_agrees(results, alone, m.backend, "8 streams on 4 slots")


def test_soak_500_generations_leak_nothing(model_path: str) -> None:
    me = psutil.Process()
    with LocalModel(model_path, ctx_size=512) as m:
        pid = m.pid
        for _ in range(20):  # warm up: connection pool, caches
            m.generate("Hi", max_tokens=2)
        gc.collect()
        fds, threads, rss = me.num_fds(), me.num_threads(), me.memory_info().rss
        for i in range(500):
            if i % 2:
                still_serves(m)
            else:
                assert "".join(m.stream("Hello", max_tokens=2, **GREEDY)), "an empty streamed reply"
        gc.collect()
        assert m.pid == pid  # one server throughout
        assert me.num_fds() <= fds
        assert me.num_threads() <= threads
        growth = me.memory_info().rss - rss
        print(f"soak: fds {fds}→{me.num_fds()}, threads {threads}→{me.num_threads()}, rss +{growth / 2**20:.1f} MiB")
        assert growth < 8 * 2**20
