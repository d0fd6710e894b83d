"""One options pipeline: a request is checked once, at the API's entry before any I/O, and translated once.

The counts come from Python's profiler hook watching the families' own
functions while real requests go to the real server: nothing is replaced.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, get_type_hints

import pytest

from rocm_nb import LocalModel
from rocm_nb._lease import ModelState
from rocm_nb.client import engines
from rocm_nb.client.logprobs import DEFAULT_TOP_LOGPROBS, MAX_TOP_LOGPROBS
from rocm_nb.client.request import FAMILIES, Options, check_options, check_request
from rocm_nb.notebook import _magic_args, chat, explore, magics, playground
from rocm_nb.server._registry import ServerRegistry

HI = [{"role": "user", "content": "Say hi."}]
SOME = {"max_tokens": 4, "temperature": 0.0, "seed": 1, "stop": ".", "logprobs": True, "top_logprobs": 2}

STEPS: dict[str, Callable[..., Any]] = {
    **{f"check {family.name}": family.check for family in FAMILIES},
    **{f"translate {family.name}": family.translate for family in FAMILIES},
    "refuse for the engine": engines.refuse,
    "translate for the engine": engines.translate,
}


@contextmanager
def counted() -> Iterator[Counter[str]]:
    """How often each step of the pipeline runs, in this thread and in threads started meanwhile (map's)."""
    names = {function.__code__: name for name, function in STEPS.items()}
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code in names:
            with lock:
                seen[names[frame.f_code]] += 1

    sys.setprofile(profile)
    threading.setprofile(profile)  # type: ignore[arg-type]
    try:
        yield seen
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]


def each(n: int, *, checks: int = 1) -> Counter[str]:
    """The counts of one request (``checks``) sent as ``n`` bodies."""
    return Counter({**{name: checks for name in STEPS if name.startswith("check")}, "refuse for the engine": 1,
                    **{name: n for name in STEPS if name.startswith("translate")}})


# -- unit -------------------------------------------------------------------------------------


@pytest.mark.unit
def test_every_option_belongs_to_exactly_one_family() -> None:
    owned = [name for family in FAMILIES for name in family.options]
    assert sorted(owned) == sorted(get_type_hints(Options)) and len(owned) == len(set(owned))


@pytest.mark.unit
def test_a_request_is_checked_when_made_and_only_translated_when_its_body_is() -> None:
    with counted() as seen:
        request = check_request("chat", HI, SOME)
    assert seen == Counter({name: 1 for name in STEPS if name.startswith("check")})
    with counted() as seen:
        body = request.body("vllm", "m")
    assert seen == Counter({name: 1 for name in STEPS if not name.startswith("check")})
    assert body["stop"] == ["."] and body["top_logprobs"] == 2 and body["model"] == "m"


@pytest.mark.unit
def test_the_top_logprobs_default_and_bound_are_written_once() -> None:
    """20: what OpenAI's API and vLLM take; the magics, the panel and the widgets use the same constants."""
    assert MAX_TOP_LOGPROBS == 20 and DEFAULT_TOP_LOGPROBS == 5
    check_options({"logprobs": True, "top_logprobs": MAX_TOP_LOGPROBS})
    with pytest.raises(ValueError, match="top_logprobs must be an integer from 1 to 20, got 21"):
        check_options({"logprobs": True, "top_logprobs": 21})
    from IPython.core.error import UsageError

    with pytest.raises(UsageError, match="--probs takes 1 to 20 alternatives per token, got 21"):
        _magic_args.GenerateArgs(probs=21)
    for widget in (explore.NextTokenExplorer, playground.SamplerPlayground):
        with pytest.raises(ValueError, match="k must be between 1 and 20"):
            widget(object(), "Hi", k=21)  # type: ignore[arg-type]
    for module in (_magic_args, chat, explore, playground, magics):  # no module writes the numbers itself
        source = Path(module.__file__ or "").read_text()
        assert "DEFAULT_TOP_LOGPROBS" in source or "MAX_TOP_LOGPROBS" in source
        assert "1 <= k <= 20" not in source and "const=5" not in source and '"top_logprobs", 5' not in source


# -- the real server --------------------------------------------------------------------------


@pytest.mark.server
def test_bad_options_fail_at_the_entry_before_any_server_starts(model_path: str) -> None:
    fresh = LocalModel(model_path, ctx_size=512, registry=ServerRegistry())
    try:
        for call in (lambda: fresh.generate("x", temperature=-1),  # type: ignore[misc]
                     lambda: fresh.chat_stream(HI, top_p=2.0),
                     lambda: fresh.astream("x", logprobs=True, top_logprobs=21),
                     lambda: fresh.map(["x"], chat=False, reasoning_effort="low")):
            with pytest.raises(ValueError):
                call()
        assert fresh.state is ModelState.NEW and fresh.pid is None  # nothing was started, nothing sent
    finally:
        fresh.close()


@pytest.mark.server
def test_each_request_is_checked_once_and_translated_once(model: LocalModel) -> None:
    model.generate("Hi", max_tokens=1)  # the client knows its server from here on: no detection below
    with counted() as seen:
        model.generate("The sky is", **SOME)
    assert seen == each(1)
    with counted() as seen:
        model.chat(HI, **SOME)
    assert seen == each(1)
    with counted() as seen:
        asyncio.run(model.achat(HI, **SOME))
    assert seen == each(1)
    with counted() as seen:  # a batch: its options checked once, the server's refusals once, one body per item
        results = model.map(["One.", "Two.", "Three."], progress=False, **SOME)
    assert all(not isinstance(r, Exception) for r in results)
    assert seen == each(3)
    with counted() as seen:
        results = asyncio.run(model.amap(["One.", "Two."], progress=False, **SOME))
    assert seen == each(2)


@pytest.mark.server
def test_a_chat_batch_takes_the_chat_only_options(model: LocalModel) -> None:
    """Before, a batch checked its options as a plain completion, so a chat batch refused the reasoning options."""
    [reply] = model.map(["Hi"], progress=False, max_tokens=4, chat_template_kwargs={"enable_thinking": False})
    assert not isinstance(reply, Exception) and reply.text
