"""Nothing left running behind the user's back: a replaced model file, a stream kept in a variable.

Issue 11 items 8 and 9, on the real llama-server (item 6, an interrupted
``%rocm_load``, is in tests/test_kernel.py: it needs a real kernel).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from rocm_nb import LocalModel
from rocm_nb.server._registry import ServerRegistry
from tests.support.decoding import assert_decoding_stopped

pytestmark = pytest.mark.server

GREEDY = {"temperature": 0.0, "seed": 42}
LONG = "Once upon a time, in a faraway kingdom, there lived"


# -- item 8: a model file replaced at the same path ------------------------------------------


def test_a_model_file_replaced_at_the_same_path_gets_its_own_server(model_path: str, tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    shutil.copyfile(model_path, path)
    registry: ServerRegistry = ServerRegistry()  # type: ignore[type-arg]
    with LocalModel(path, ctx_size=512, registry=registry) as first:
        with LocalModel(path, ctx_size=512, registry=registry) as same:
            assert same.pid == first.pid  # the same file: the running server is shared
        partial = tmp_path / "model.gguf.part"  # a new file put in place as a download does: write, then rename
        shutil.copyfile(model_path, partial)
        os.replace(partial, path)
        with LocalModel(path, ctx_size=512, registry=registry) as replaced:
            assert replaced.pid != first.pid  # not the server that loaded the old file
            assert replaced.config.model == first.config.model
            assert replaced.config.model_identity != first.config.model_identity
            assert replaced.generate("Hi", max_tokens=2, **GREEDY).text
        assert first.generate("Hi", max_tokens=2, **GREEDY).text  # the old one still serves its own file


# -- item 9: a stream kept in a variable -----------------------------------------------------


def _generate(model: LocalModel) -> None:
    model.generate("Hi", max_tokens=2, **GREEDY)


def _agenerate(model: LocalModel) -> None:
    asyncio.run(model.agenerate("Hi", max_tokens=2, **GREEDY))


def _map(model: LocalModel) -> None:
    model.map(["Hi"], max_tokens=2, progress=False, **GREEDY)


def _another_stream(model: LocalModel) -> None:
    with model.stream("Hi", max_tokens=2, **GREEDY) as stream:
        next(stream)


NEW_REQUESTS: dict[str, Callable[[LocalModel], None]] = {
    "generate": _generate, "agenerate": _agenerate, "map": _map, "stream": _another_stream,
}


@pytest.mark.parametrize("new_request", list(NEW_REQUESTS))
def test_a_new_request_closes_the_stream_held_in_a_variable(model: LocalModel, new_request: str) -> None:
    assert_decoding_stopped(model)
    before = model.metrics()["llamacpp:tokens_predicted_total"]
    held = model.stream(LONG, max_tokens=4000, **GREEDY)
    for i, _ in enumerate(held):  # one cell reads a little and breaks out; `held` keeps the stream
        if i == 1:
            break
    NEW_REQUESTS[new_request](model)  # the next cell asks for something else
    assert next(held, None) is None and held.completion is None  # closed before it finished
    predicted = assert_decoding_stopped(model)  # and the server stopped decoding it: counters, not a sleep
    assert predicted - before < 1000  # far short of its max_tokens
    assert any("cancel task" in line for line in model.logs(400))


def test_a_stream_read_by_another_thread_is_left_alone(model: LocalModel) -> None:
    stream = model.stream(LONG, max_tokens=48, **GREEDY)
    reading, asked = threading.Event(), threading.Event()
    pieces: list[str] = []

    def read() -> None:
        for piece in stream:
            pieces.append(piece)
            if len(pieces) == 1:
                reading.set()
                asked.wait(60)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert reading.wait(60)
        model.generate("Hi", max_tokens=2, **GREEDY)  # this thread's request: the reader's stream goes on
    finally:
        asked.set()
        reader.join(120)
    assert stream.completion is not None and stream.completion.timings is not None
    assert stream.completion.timings.predicted_tokens == 48 and "".join(pieces) == stream.completion.text


def test_a_stream_not_yet_read_is_not_closed_by_a_newer_request(model: LocalModel) -> None:
    later = model.stream("Hi", max_tokens=4, **GREEDY)  # nothing sent yet: it holds nothing on the server
    _generate(model)
    assert "".join(later) and later.completion is not None
