"""``model.map()`` and ``model.amap()``: many prompts over the server's parallel slots, real server."""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import pytest

from rocm_nb import Client, Completion, GenerationError, LocalModel, connect
from rocm_nb.modelfiles.catalog import DEFAULT_MODEL
from rocm_nb.server._registry import ServerRegistry
from tests.support.decoding import REFERENCE, assert_greedy_agrees
from tests.support.metrics import busy_slots
from tests.support.processes import wait_until

pytestmark = pytest.mark.server

GREEDY: dict[str, Any] = {"temperature": 0.0, "seed": 7, "max_tokens": 16}
PLACES = ["sea", "desert", "forest", "arctic", "jungle", "river"]
PROMPTS = [f"Name one animal that lives in the {place}." for place in PLACES]
LONG = {"temperature": 0.0, "seed": 7, "max_tokens": 2000}
STORY = "Write a very long story about a lighthouse keeper, in many chapters."
STOP_WITHIN_S = 30  # a hang guard, not a measurement: uncancelled, 6 × 2000 tokens take minutes


@pytest.fixture(scope="module")
def wide() -> Iterator[LocalModel]:
    """The default model on 4 slots of 1024 tokens each."""
    with LocalModel(DEFAULT_MODEL, ctx_size=4096, parallel=4) as m:
        yield m


def texts(results: list[Completion | Exception]) -> list[str]:
    assert all(isinstance(r, Completion) for r in results), results
    return [r.text for r in results if isinstance(r, Completion)]


def test_results_in_input_order_equal_a_sequential_greedy_loop(wide: LocalModel) -> None:
    sequential = [wide.chat([{"role": "user", "content": p}], **GREEDY, **REFERENCE) for p in PROMPTS]
    assert len({c.text for c in sequential}) == len(PROMPTS)  # distinct answers: an order mix-up would show
    before = wide.metrics()
    batched = wide.map(PROMPTS, progress=False, **GREEDY)
    in_flight = busy_slots(wide, before)
    print(f"\nmap over {len(PROMPTS)} prompts: {in_flight:.2f} busy slots per decode on average")
    # the slots decode in one batch: compared up to a near-tie (tests/support/decoding.py)
    assert_greedy_agrees(texts(batched), sequential, wide.backend, "map() against a sequential loop")
    assert in_flight > 1.5  # the default concurrency is the server's 4 slots, not 1


def test_concurrency_one_runs_one_at_a_time(wide: LocalModel) -> None:
    before = wide.metrics()
    results = wide.map(PROMPTS[:3], concurrency=1, progress=False, **GREEDY)
    assert len(texts(results)) == 3
    assert busy_slots(wide, before) == pytest.approx(1.0, abs=0.01)  # /metrics rounds the average


def test_plain_completions_and_message_lists(wide: LocalModel) -> None:
    story = "Once upon a time"
    messages = [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "Hello!"}]
    raw, chat = wide.map([story, messages], chat=False, progress=False, **GREEDY)
    alone = [wide.generate(story, **GREEDY, **REFERENCE), wide.chat(messages, **GREEDY, **REFERENCE)]
    # map() ran both at once, in one batch: compared up to a near-tie (tests/support/decoding.py)
    assert_greedy_agrees(texts([raw, chat]), alone, wide.backend, "a plain prompt and a message list in one map()")


def test_an_item_that_fails_holds_its_error_and_the_others_run(model: LocalModel) -> None:
    too_long = "word " * 3000  # the session model has 2 slots of 2048 tokens
    results = model.map(["Say hi.", too_long, 42, [{"role": "user", "content": "Say bye."}]],  # type: ignore[list-item]
                        progress=False, **GREEDY)
    first, refused, not_a_prompt, last = results
    assert isinstance(first, Completion) and first.text
    assert isinstance(refused, GenerationError) and refused.status_code == 400
    assert "exceeds the available context size" in str(refused)
    assert isinstance(not_a_prompt, TypeError)
    assert isinstance(last, Completion) and last.text


def test_bad_options_raise_at_once(model: LocalModel) -> None:
    with pytest.raises(ValueError, match="max_tokens must be a positive integer"):
        model.map(["Hi"], max_tokens=0)
    with pytest.raises(TypeError, match="unknown option"):
        model.map(["Hi"], temprature=0.5)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="concurrency must be a positive integer"):
        model.map(["Hi"], concurrency=0)


def test_progress_bar(model: LocalModel, capsys: pytest.CaptureFixture[str]) -> None:
    model.map(PROMPTS[:2], **GREEDY)
    shown = capsys.readouterr().err
    assert "map: 100%" in shown and "2/2" in shown
    model.map(PROMPTS[:2], progress=False, **GREEDY)
    assert capsys.readouterr().err == ""


def test_connect_gets_map_too(model: LocalModel) -> None:
    with connect(model.base_url, api_key=model.api_key) as remote:
        assert texts(remote.map(PROMPTS[:2], progress=False, **GREEDY)) == texts(
            model.map(PROMPTS[:2], progress=False, **GREEDY))


def stopped_decoding(client: Client) -> bool:
    """True when no request is in flight and no decode happens for 0.3 s."""
    first = client.metrics()
    if first["llamacpp:requests_processing"] != 0:
        return False
    threading.Event().wait(0.3)
    return client.metrics()["llamacpp:n_decode_total"] == first["llamacpp:n_decode_total"]


def test_ctrl_c_cancels_the_requests_in_flight() -> None:
    # a server of its own (a registry of its own): nothing an earlier test left on a shared one can answer for it
    with LocalModel(DEFAULT_MODEL, ctx_size=4096, parallel=4, registry=ServerRegistry()) as wide:
        ctrl_c_cancels(wide)


def ctrl_c_cancels(wide: LocalModel) -> None:
    watcher = connect(wide.base_url, api_key=wide.api_key)
    before = watcher.metrics()["llamacpp:tokens_predicted_total"]
    main = threading.main_thread().ident
    assert main is not None

    busy: list[float] = []

    def interrupt_when_busy() -> None:
        # Ctrl-C comes whatever happens here: a watcher that failed must not leave the batch to run for minutes
        try:
            # one request in flight is enough to cancel: twice this round a loaded machine did not show two
            # within 60 s (quiet, the server holds one for about 2 s before the others join it)
            busy.append(wait_until(lambda: watcher.metrics()["llamacpp:requests_processing"] >= 1, interval=0.05))
        finally:
            # shown if the test fails: where the main thread was, and who would handle SIGINT there
            where = "".join(traceback.format_stack(sys._current_frames()[main])[-3:])
            print(f"SIGINT sent (handler {signal.getsignal(signal.SIGINT)!r}) with the main thread at:\n{where}")
            signal.pthread_kill(main, signal.SIGINT)  # what Ctrl-C or Kernel → Interrupt does

    threading.Thread(target=interrupt_when_busy, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        results = wide.map([STORY] * 6, progress=False, **LONG)
        pytest.fail(f"map() returned before Ctrl-C came (busy: {busy}): {results!r:.600}")
    assert busy, "the interrupt came before any request was in flight (see the watcher's error above)"
    took = wait_until(lambda: stopped_decoding(watcher), timeout=STOP_WITHIN_S)
    decoded = watcher.metrics()["llamacpp:tokens_predicted_total"] - before
    print(f"\nCtrl-C: the server decoded {decoded:.0f} of {6 * 2000} tokens, idle {took:.2f} s later")
    assert decoded < 2 * 2000
    assert texts(wide.map(PROMPTS[:1], progress=False, **GREEDY))  # the model still serves
    watcher.close()


async def test_amap_matches_map_and_cancels(wide: LocalModel) -> None:
    alone = [wide.chat([{"role": "user", "content": p}], **GREEDY, **REFERENCE) for p in PROMPTS[:2]]
    # each runs both prompts at once, in one batch: compared up to a near-tie (tests/support/decoding.py)
    assert_greedy_agrees(texts(await wide.amap(PROMPTS[:2], progress=False, **GREEDY)), alone, wide.backend, "amap()")
    assert_greedy_agrees(texts(wide.map(PROMPTS[:2], progress=False, **GREEDY)), alone, wide.backend, "map()")

    batch = asyncio.create_task(wide.amap([STORY] * 4, progress=False, **LONG))
    while (await asyncio.to_thread(wide.metrics))["llamacpp:requests_processing"] < 2:
        await asyncio.sleep(0.05)
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    took = await asyncio.to_thread(wait_until, lambda: stopped_decoding(wide), STOP_WITHIN_S)
    print(f"\namap cancelled: the server idle {took:.2f} s later")
