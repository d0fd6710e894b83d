"""LocalModel against the real llama-server and the real default model."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from rocm_nb import (
    BinaryNotFound,
    GenerationError,
    InvalidModel,
    LocalModel,
    ModelClosed,
    ModelNotFound,
    ServerCrashed,
    ServerStartError,
    ServerStartTimeout,
    connect,
)
from rocm_nb._exposure import free_port
from rocm_nb.server import LlamaServer
from tests.support.decoding import FRESH_PROMPT, REFERENCE, assert_decoding_stopped, assert_greedy_agrees, still_serves
from tests.support.processes import gone, wait_until
from tests.support.threads import run_together

GREEDY = {"temperature": 0.0, "seed": 7}


@pytest.mark.server
def test_generate_returns_text_and_server_timings(model: LocalModel) -> None:
    result = model.generate("Once upon a time", max_tokens=16, **GREEDY)
    assert result.text.strip()
    assert result.finish_reason == "length"
    assert result.timings is not None
    assert result.timings.predicted_tokens == 16
    assert result.timings.prompt_tokens > 0
    assert result.timings.predicted_per_second > 0
    assert result.ttft_s is not None and 0 < result.ttft_s < result.elapsed_s  # type: ignore[operator]
    assert "tok/s" in result._repr_html_()  # shown as HTML rendered by rocm_nb, never as Markdown


@pytest.mark.server
def test_stream_yields_str_pieces_that_make_the_completion(model: LocalModel) -> None:
    # the whole prompt computed afresh each time: the same batch shapes, so the same greedy text
    expected = model.generate("The three primary colours are", max_tokens=20, **GREEDY, **FRESH_PROMPT).text
    stream = model.stream("The three primary colours are", max_tokens=20, **GREEDY, **FRESH_PROMPT)
    pieces = list(stream)
    assert len(pieces) > 1
    assert all(isinstance(p, str) for p in pieces)
    assert "".join(pieces) == expected
    assert stream.completion is not None and stream.completion.text == expected


@pytest.mark.server
def test_chat_uses_the_models_template(model: LocalModel) -> None:
    question = "What is the capital of France?"
    reply = model.chat([{"role": "user", "content": question}], max_tokens=24, **GREEDY)
    assert reply.text.strip()
    assert reply.finish_reason in {"stop", "length"}
    assert reply.timings is not None
    # the template wraps the message in role markers: more prompt tokens than the text alone
    # (read, or reused from the prompt cache when an earlier test sent the same conversation)
    prompt = reply.timings.prompt_tokens + (reply.timings.cached_tokens or 0)
    assert prompt > len(model.tokenize(question)) + 4
    assert "<|im_start|>" in (model.info.chat_template or "")


@pytest.mark.server
async def test_async_stream_and_chat(model: LocalModel) -> None:
    expected = model.generate("Roses are red,", max_tokens=12, **GREEDY, **FRESH_PROMPT).text
    pieces = [p async for p in model.astream("Roses are red,", max_tokens=12, **GREEDY, **FRESH_PROMPT)]
    assert "".join(pieces) == expected
    reply = await model.achat([{"role": "user", "content": "Say hello."}], max_tokens=8, **GREEDY)
    assert reply.text.strip()
    both = await asyncio.gather(
        model.agenerate("One", max_tokens=6, **GREEDY), model.agenerate("Two", max_tokens=6, **GREEDY)
    )
    assert all(c.timings and c.timings.predicted_tokens == 6 for c in both)


LONG = "Once upon a time, in a faraway kingdom, there lived"


@pytest.mark.server
@pytest.mark.parametrize("how", ["break", "exception", "close"])
def test_closing_a_stream_early_cancels_on_the_server(model: LocalModel, how: str) -> None:
    before = model.metrics()["llamacpp:tokens_predicted_total"]
    stream = model.stream(LONG, max_tokens=4000, **GREEDY)
    if how == "break":
        for i, _ in enumerate(stream):
            if i == 3:
                break
    elif how == "exception":
        with pytest.raises(KeyboardInterrupt), stream:
            for i, _ in enumerate(stream):
                if i == 3:
                    raise KeyboardInterrupt
    else:
        next(stream)
        stream.close()
    assert stream.completion is None  # it did not run to its end
    if how == "break":
        del stream  # a plain `break` leaves the stream to be closed when it is dropped
    predicted = assert_decoding_stopped(model)  # nothing more decoded: counters, not a sleep
    assert predicted - before < 1000  # far short of max_tokens: the server stopped
    assert any("cancel task" in line for line in model.logs(200))


@pytest.mark.server
def test_concurrent_streams_on_two_slots_are_not_mixed(model: LocalModel) -> None:
    prompts = ["List three fruits:", "Count from one to five:"]
    alone = [model.generate(p, max_tokens=24, **GREEDY, **REFERENCE) for p in prompts]
    together = run_together(*(lambda p=p: "".join(model.stream(p, max_tokens=24, **GREEDY)) for p in prompts))
    # two slots decode in one batch: compared up to a near-tie (tests/support/decoding.py)
    assert_greedy_agrees(together, alone, model.backend, "2 streams on 2 slots")


@pytest.mark.server
def test_utilities(model: LocalModel) -> None:
    tokens = model.tokenize("Hello world")
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert model.detokenize(tokens).strip() == "Hello world"
    props = model.props()
    assert props["total_slots"] == 2
    assert props["default_generation_settings"]["n_ctx"] == 4096 // 2  # per slot
    assert "llamacpp:tokens_predicted_total" in model.metrics()
    assert model.health() is True


@pytest.mark.server
def test_json_schema_constrains_the_output(model: LocalModel) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    reply = model.generate("A person as JSON:", max_tokens=64, json_schema=schema, **GREEDY)
    data = json.loads(reply.text)
    assert isinstance(data["name"], str) and isinstance(data["age"], int)


@pytest.mark.server
def test_metadata_and_identity(model: LocalModel) -> None:
    assert model.info.architecture == "llama"
    assert model.backend == "cpu"
    assert model.config.gpu_layers == 0  # CPU backend: nothing to offload
    assert model.base_url.startswith("http://127.0.0.1:")
    assert model.api_key and len(model.api_key) >= 24
    assert model.pid is not None
    assert any("listening on" in line for line in model.logs())


@pytest.mark.server
def test_api_key_is_required_and_connect_works(model: LocalModel) -> None:
    anonymous = connect(model.base_url)
    with pytest.raises(GenerationError) as info:
        anonymous.generate("Hi", max_tokens=2)
    assert info.value.status_code == 401
    with connect(model.base_url, api_key=model.api_key) as client:
        assert client.generate("Hi", max_tokens=3, **GREEDY, **FRESH_PROMPT).text == model.generate(
            "Hi", max_tokens=3, **GREEDY, **FRESH_PROMPT
        ).text


@pytest.mark.server
def test_listens_on_loopback_only(model: LocalModel) -> None:
    import psutil

    listening = [c.laddr for c in psutil.Process(model.pid).net_connections("tcp") if c.status == "LISTEN"]
    assert listening and all(addr.ip == "127.0.0.1" for addr in listening)


@pytest.mark.server
def test_registry_reuses_the_running_server(model_path: str) -> None:
    with LocalModel(model_path, ctx_size=1024) as first:
        began = time.perf_counter()
        second = LocalModel(model_path, ctx_size=1024).start()
        attach_s = time.perf_counter() - began
        assert second.pid == first.pid
        second.close()
        still_serves(first)
        pid = first.pid
    assert gone(pid)(), "leaving the block closes the last user's server, and close() waits for it"
    print(f"attach to a running server took {attach_s * 1000:.1f} ms")


@pytest.mark.server
def test_close_stops_the_process_and_is_idempotent(model_path: str) -> None:
    m = LocalModel(model_path, ctx_size=512).start()
    pid = m.pid
    began = time.perf_counter()
    m.close()
    assert gone(pid)(), "close() returns once the process is gone"
    m.close()
    print(f"close() to process gone: {time.perf_counter() - began:.3f} s")
    with pytest.raises(ModelClosed):
        m.generate("Hi", max_tokens=2)


@pytest.mark.server
def test_lazy_start_on_first_request(model_path: str) -> None:
    m = LocalModel(model_path, ctx_size=640)
    assert m.pid is None
    try:
        still_serves(m)
        assert m.pid is not None
    finally:
        m.close()


@pytest.mark.server
def test_server_killed_mid_stream_raises_server_crashed(model_path: str) -> None:
    m = LocalModel(model_path, ctx_size=768).start()
    try:
        stream = m.stream(LONG, max_tokens=4000, **GREEDY)
        first = next(stream)
        os.kill(m.pid, signal.SIGKILL)  # type: ignore[arg-type]
        with pytest.raises(ServerCrashed) as info:
            for _ in stream:
                pass
        assert info.value.returncode == -signal.SIGKILL
        assert info.value.partial.startswith(first)
        assert "\n" not in str(info.value) and "model.start()" in info.value.__notes__[-1]
        # a fresh server on demand
        m.start()
        still_serves(m)
    finally:
        m.close()


@pytest.mark.server
def test_sigkilled_owner_leaves_no_orphan(model_path: str) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        from rocm_nb import LocalModel
        m = LocalModel({model_path!r}, ctx_size=896).start()
        print(m.pid, flush=True)
        time.sleep(600)
    """)
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    server_pid = int(owner.stdout.readline())
    assert not gone(server_pid)()
    owner.kill()
    owner.wait()
    # the kernel kills it with its owner (PDEATHSIG); left alone it would serve on for good
    took = wait_until(gone(server_pid))
    print(f"orphan gone {took:.3f} s after SIGKILL of its owner")


@pytest.mark.unit
def test_stale_server_of_a_dead_owner_is_reaped(tmp_path: Path) -> None:
    environ = {**os.environ, "ROCM_NB_RUNTIME_DIR": str(tmp_path / "run")}
    stray = subprocess.Popen(["sleep", "60"], start_new_session=True)
    dead_owner = subprocess.Popen(["true"])
    dead_owner.wait()
    import psutil

    # Popen returns after fork, possibly before exec: record the process only once it is `sleep`,
    # or the record names the Python that forked it and rightly is not trusted.
    wait_until(lambda: psutil.Process(stray.pid).name() == "sleep", timeout=10)
    record = tmp_path / "run" / f"{stray.pid}.json"
    record.parent.mkdir()
    record.write_text(json.dumps({
        "owner_pid": dead_owner.pid, "owner_created": 1.0,
        "server_pid": stray.pid, "server_created": psutil.Process(stray.pid).create_time(),
        "exe": psutil.Process(stray.pid).exe(), "argv": ["sleep", "60"],  # exactly the process it names
    }))
    from rocm_nb._process import reap_stale_servers

    assert reap_stale_servers(environ) == [stray.pid]
    assert stray.wait(2) == -signal.SIGKILL
    assert not record.exists()


@pytest.mark.server
def test_a_port_taken_between_probe_and_bind_is_survived(model: LocalModel) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        picks = iter([taken, free_port()])
        server = LlamaServer(replace(model.config, ctx_size=1280),
                             port_picker=lambda host: next(picks))
        with server:
            assert server.port != taken
            assert httpx.get(f"{server.base_url}/health").status_code == 200


@pytest.mark.server
def test_start_timeout_kills_the_process(model: LocalModel) -> None:
    server = LlamaServer(replace(model.config, ctx_size=1408),
                         start_timeout=0.0)
    with pytest.raises(ServerStartTimeout, match="did not become ready"):
        server.start()
    assert not server.alive
    assert gone(server.pid)()


@pytest.mark.server
def test_exit_during_load_raises_server_start_error(model: LocalModel, tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "alien.gguf"
    writer = gguf.GGUFWriter(str(path), "alien-arch")
    writer.add_context_length(256)
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    m = LocalModel(str(path), server=model.binary.path)
    with pytest.raises(ServerStartError) as info:
        m.start()
    assert info.value.returncode not in (0, None)
    assert info.value.log_tail
    assert info.value.hint
    assert "\n" not in str(info.value) and any("alien" in note for note in info.value.__notes__)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("spec", "error"),
    [("/no/such/model.gguf", ModelNotFound), ("no-such-catalogue-name", ModelNotFound)],
)
def test_bad_model_names(spec: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        LocalModel(spec)


@pytest.mark.unit
def test_not_a_gguf_fails_before_any_server(tmp_path: Path) -> None:
    fake = tmp_path / "notes.gguf"
    fake.write_text("just some text\n")
    with pytest.raises(InvalidModel, match="not a GGUF"):
        LocalModel(str(fake))


@pytest.mark.server
def test_no_llama_server_says_how_to_get_one(model_path: str) -> None:
    with pytest.raises(BinaryNotFound, match="rocm-nb server install"):
        LocalModel(model_path, server="/nonexistent/llama-server")


@pytest.mark.server
def test_bad_config_values(model_path: str) -> None:
    with pytest.raises(ValueError, match="beyond what"):
        LocalModel(model_path, ctx_size=10**6)
    with pytest.raises(ValueError, match="parallel must be a positive integer"):
        LocalModel(model_path, parallel=0)
