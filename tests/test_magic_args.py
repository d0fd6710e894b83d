"""The magics' typed arguments, their options, and the --format logic below them: no server, no shell."""

from __future__ import annotations

import inspect
import sys
from typing import Any
from unittest import mock

import pytest
from IPython.core.error import UsageError

from rocm_nb import Completion, GenerationError, LocalModel
from rocm_nb._extras import needs_extra
from rocm_nb.client.request import DEFAULT_MAX_TOKENS
from rocm_nb.client.stream import Delta
from rocm_nb.notebook._format import FORMATS, formatted, json_schema, show
from rocm_nb.notebook._magic_args import (
    ChatArgs,
    GenerateArgs,
    LoadArgs,
    ModelsArgs,
    SamplingArgs,
    StopArgs,
    options_from,
)
from rocm_nb.notebook.magics import RocmMagics, parse_args

pytestmark = pytest.mark.unit

# -- arguments --------------------------------------------------------------------------------


def test_generate_line_parses_into_typed_arguments() -> None:
    args = parse_args("rocm_generate", '-a small --max-tokens 8 --temperature 0.5 --seed 3 --stop "\\n\\n" '
                      '--stop END --system "Be brief." --out r --no-stream --json-schema pet --format json',
                      GenerateArgs)
    assert args == GenerateArgs(alias="small", max_tokens=8, temperature=0.5, seed=3, stop=["\\n\\n", "END"],
                                system="Be brief.", out="r", no_stream=True, json_schema="pet", format="json")
    assert parse_args("rocm_generate", "", GenerateArgs) == GenerateArgs()
    assert parse_args("rocm_generate", "--raw", GenerateArgs).raw
    assert not parse_args("rocm_generate", "--raw --chat", GenerateArgs).raw


def test_the_default_max_tokens_is_defined_once() -> None:
    assert GenerateArgs().max_tokens is None and "max_tokens" not in options_from(GenerateArgs())
    assert f"default {DEFAULT_MAX_TOKENS}" in (RocmMagics.rocm_generate.__doc__ or "")


def test_other_magics_parse_into_their_arguments() -> None:
    assert parse_args("rocm_load", "m.gguf --ctx 2048 --gpu-layers 10 --rpc a:1 --rpc b:2 --alias x", LoadArgs) \
        == LoadArgs(model="m.gguf", ctx_size=2048, gpu_layers=10, rpc=["a:1", "b:2"], alias="x")
    assert parse_args("rocm_load", "", LoadArgs) == LoadArgs()
    assert parse_args("rocm_generate", "--alias small", GenerateArgs).alias == "small"
    assert parse_args("rocm_chat", "small --max-tokens 32", ChatArgs) == ChatArgs(alias="small", max_tokens=32)
    assert parse_args("rocm_models", "", ModelsArgs) == ModelsArgs(dirs=[])
    assert parse_args("rocm_stop", "small", StopArgs) == StopArgs(alias="small", all=False)


@pytest.mark.parametrize(("magic", "line", "message"), [
    ("rocm_generate", "--max-tokenz 3", "unrecognized arguments"),
    ("rocm_generate", "--format yaml", "invalid choice"),
    ("rocm_generate", "--raw --system x", "--system needs chat mode"),
    ("rocm_generate", '--system "unclosed', "No closing quotation"),
    ("rocm_load", "m --gpu-layers many", "--gpu-layers takes a number or 'auto', not 'many'"),
    ("rocm_chat", "--temperature hot", "invalid float value"),
])
def test_a_bad_line_is_a_usage_error(magic: str, line: str, message: str) -> None:
    into: dict[str, Any] = {"rocm_generate": GenerateArgs, "rocm_load": LoadArgs, "rocm_chat": ChatArgs}
    with pytest.raises(UsageError, match=message):
        parse_args(magic, line, into[magic])


def test_options_hold_only_what_was_set() -> None:
    assert options_from(SamplingArgs()) == {}
    assert options_from(GenerateArgs(max_tokens=8, temperature=0.0, seed=0, stop=["x"])) == {
        "max_tokens": 8, "temperature": 0.0, "seed": 0, "stop": ["x"]}
    assert options_from(ChatArgs(temperature=0.2, system="ignored: the panel takes it")) == {"temperature": 0.2}
    assert options_from(GenerateArgs(stop=[])) == {}


def test_messages_put_the_system_prompt_first() -> None:
    assert GenerateArgs().messages("Hi") == [{"role": "user", "content": "Hi"}]
    assert GenerateArgs(system="S").messages("Hi")[0] == {"role": "system", "content": "S"}


# -- _format ----------------------------------------------------------------------------------


def test_json_schema_is_the_named_dict_or_any_object_for_json() -> None:
    pet = {"type": "object"}
    assert json_schema("markdown", "pet", {"pet": pet}) is pet
    assert json_schema("json", None, {}) == {"type": "object"}
    assert all(json_schema(f, None, {}) is None for f in FORMATS if f != "json")
    with pytest.raises(UsageError, match="--json-schema pet: no dict variable"):
        json_schema("json", "pet", {"pet": "not a dict"})


def test_formatted_replies() -> None:
    reply = Completion('Here:\n~~~\nx = 1\n~~~\n{"a": 1}', "stop", None)
    for fmt in ("markdown", "text"):
        shown = formatted(reply, fmt, None)
        assert (shown.value, shown.returns, shown.new_cell) == (reply, False, None)
    assert formatted(reply, "code", None).new_cell == "x = 1"
    data = formatted(Completion('{"a": 1}', "stop", None), "json", {"type": "object"})
    assert (data.value, data.returns, data.new_cell) == ({"a": 1}, True, None)
    with pytest.raises(GenerationError) as info:  # checked against the schema whatever the format
        formatted(Completion('{"a": 1}', "stop", None), "markdown", {"required": ["b"]})
    assert info.value.body == '{"a": 1}'


def test_the_cell_result_or_the_out_variable() -> None:
    names: dict[str, Any] = {}
    json_reply = formatted(Completion("[1, 2]", "stop", None), "json", None)
    assert json_reply.result(out=None, namespace=names) == [1, 2] and names == {}
    assert json_reply.result(out="data", namespace=names) is None and names == {"data": [1, 2]}
    text = Completion("Hi", "stop", None)
    assert formatted(text, "text", None).result(out=None, namespace=names) is None
    formatted(text, "text", None).result(out="reply", namespace=names)
    assert names["reply"] is text


class FakeStream:
    """What show() uses of a TokenStream: a context manager that yields pieces, then has a completion."""

    def __init__(self, pieces: list[str], fail: BaseException | None = None) -> None:
        self.pieces, self.fail, self.closed = pieces, fail, False
        self.completion: Completion | None = None

    def __enter__(self) -> FakeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def deltas(self) -> Any:
        for piece in self.pieces:
            yield Delta(text=piece)
        if self.fail is not None:
            raise self.fail
        self.completion = Completion("".join(self.pieces), "stop", None, ttft_s=0.01, elapsed_s=0.1)


@pytest.mark.parametrize(("fmt", "markdown"), [("markdown", True), ("code", True), ("text", False), ("json", False)])
def test_show_streams_then_renders_as_the_format_asks(fmt: str, markdown: bool) -> None:
    bundles: list[dict[str, str]] = []
    stream = FakeStream(["Hel", "lo"])
    completion = show(stream, fmt, publish=lambda b, _: bundles.append(b))  # type: ignore[arg-type]
    assert completion.text == "Hello" and stream.closed
    assert bundles[0] == {"text/plain": "▌"} and bundles[-1]["text/plain"].startswith("Hello\n\nfirst token")
    assert ("text/html" in bundles[-1]) is markdown and "text/markdown" not in bundles[-1]


def test_show_once_without_live_updates_and_a_stop_footer_on_interrupt() -> None:
    bundles: list[dict[str, str]] = []
    show(FakeStream(["a", "b"]), "text", live=False, publish=lambda b, _: bundles.append(b))  # type: ignore[arg-type]
    assert len(bundles) == 1
    bundles.clear()
    with pytest.raises(KeyboardInterrupt) as info:
        show(FakeStream(["abc"], KeyboardInterrupt()), "markdown",  # type: ignore[arg-type]
             publish=lambda b, _: bundles.append(b))
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert bundles[-1]["text/plain"].endswith("■ stopped after 3 characters")


# -- extras -----------------------------------------------------------------------------------


def test_needs_extra_converts_only_its_own_modules() -> None:
    with mock.patch.dict(sys.modules, {"ipywidgets": None}), pytest.raises(ModuleNotFoundError) as info, \
            needs_extra("notebook"):
        import ipywidgets  # noqa: F401
    assert info.value.name == "ipywidgets" and 'pip install "rocm_nb[notebook]"' in str(info.value)
    with pytest.raises(ModuleNotFoundError, match="No module named 'no_such_module'"), needs_extra("hub"):
        import no_such_module  # type: ignore[import-not-found]  # noqa: F401


def test_rocm_load_speaks_local_models_vocabulary() -> None:
    """A model is a model, an alias an alias, and each memory option is LocalModel's keyword."""
    args = parse_args("rocm_load", "minilm --alias vectors --ctx-size 2048 --parallel 4 --embedding --pooling mean "
                      "--cache-type q8_0 --flash-attn on --unified-memory off --ubatch-size 256 --batch-size 256",
                      LoadArgs)
    assert (args.local_model, args.alias) == ("minilm", "vectors")
    keywords = args.load_keywords()
    assert {k: keywords[k] for k in ("ctx_size", "parallel", "embedding", "pooling", "cache_type", "flash_attn",
                                     "unified_memory", "ubatch_size", "batch_size")} == {
        "ctx_size": 2048, "parallel": 4, "embedding": True, "pooling": "mean", "cache_type": "q8_0",
        "flash_attn": "on", "unified_memory": "off", "ubatch_size": 256, "batch_size": 256}
    assert set(keywords) <= set(inspect.signature(LocalModel).parameters)  # every one is LocalModel's own name
    devices = parse_args("rocm_load", "m.gguf --backend vulkan --device 1 --gpu-memory 6GiB", LoadArgs).load_keywords()
    assert (devices["backend"], devices["device"], devices["gpu_memory"]) == ("vulkan", 1, "6GiB")
    with pytest.raises(UsageError, match="invalid choice: 'metal'"):
        parse_args("rocm_load", "m.gguf --backend metal", LoadArgs)
    assert keywords["warm_cache"] is True  # the prompt cache is kept across restarts unless told otherwise
    assert parse_args("rocm_load", "m.gguf --no-warm-cache", LoadArgs).load_keywords()["warm_cache"] is False
    split = parse_args("rocm_load", "m.gguf --cache-type-k q8_0 --cache-type-v f16 --reranking", LoadArgs)
    assert (split.cache_type_k, split.cache_type_v, split.reranking) == ("q8_0", "f16", True)
    assert parse_args("rocm_load", "m.gguf --ctx 512", LoadArgs).ctx_size == 512  # the short form
    remote = parse_args("rocm_load", "Qwen/Qwen3-8B --url http://box:8000/v1 --alias box", LoadArgs)
    assert (remote.model, remote.url, remote.alias) == ("Qwen/Qwen3-8B", "http://box:8000/v1", "box")
    with pytest.raises(ValueError, match="remote model id"):
        _ = remote.local_model
    for gone in ("--name x", "--ctx-size 512 --model y"):  # the old words are gone, not quietly kept
        with pytest.raises(UsageError, match="unrecognized arguments"):
            parse_args("rocm_load", f"m.gguf {gone}", LoadArgs)
    with pytest.raises(UsageError, match="unrecognized arguments"):
        parse_args("rocm_generate", "-m small", GenerateArgs)
    with pytest.raises(UsageError, match="invalid choice: 'q3'"):
        parse_args("rocm_load", "m.gguf --cache-type q3", LoadArgs)


def test_a_session_key_pastes_into_rocm_load_as_it_is() -> None:
    """A per-session key never reads as an option: one that began with "-" broke `--api-key KEY` (1 run in 64)."""
    from pathlib import Path

    from rocm_nb.server import LlamaServer, ServerConfig

    config = ServerConfig(Path("llama-server"), Path("m.gguf"), 512)
    for _ in range(500):  # with URL-safe base64 keys, 500 draws miss a leading "-" once in 2,600 runs
        key = LlamaServer(config).api_key
        args = parse_args("rocm_load", f"--url http://127.0.0.1:1 --api-key {key}", LoadArgs)
        assert args.api_key == key
