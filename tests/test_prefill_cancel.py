"""Kernel → Interrupt while llama-server is still reading a long prompt (issue 11 item 10).

llama-server notices a cancel only between tokens, so an interrupt during
prefill frees the kernel at once but the server stays busy until the prompt
is read: the output says "cancelling…" until the server is free, then says so.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator

import pytest

from rocm_nb import LocalModel
from rocm_nb.client.stream import Delta
from rocm_nb.notebook._format import PREFILL_CANCEL_NOTE, PREFILL_FREE_NOTE, show
from rocm_nb.notebook.display import Bundle
from tests.support.processes import wait_until


class Interrupted:
    """A stream interrupted before its first token, as Kernel → Interrupt during prefill does."""

    completion = None

    def __enter__(self) -> Interrupted:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def deltas(self) -> Iterator[Delta]:
        raise KeyboardInterrupt
        yield Delta()  # a generator: nothing is read before iteration


def footers(published: list[Bundle]) -> list[str]:
    """The footer lines the output showed, in order (the streaming cursor is not one)."""
    lines = [str(bundle["text/plain"]).rsplit("\n\n", 1)[-1] for bundle in published]
    return [line for line in lines if line.startswith("■")]


@pytest.mark.unit
def test_an_interrupt_before_the_first_token_says_cancelling_until_the_server_is_free() -> None:
    published: list[Bundle] = []
    answers = iter([True, True, False])
    with pytest.raises(KeyboardInterrupt):
        show(Interrupted(), "markdown", publish=lambda bundle, update: published.append(bundle),  # type: ignore[arg-type]
             busy=lambda: next(answers))
    assert footers(published)[0] == PREFILL_CANCEL_NOTE
    wait_until(lambda: footers(published)[-1] == PREFILL_FREE_NOTE, timeout=30)


@pytest.mark.unit
def test_without_a_way_to_ask_the_server_the_footer_is_the_plain_one() -> None:
    published: list[Bundle] = []
    with pytest.raises(KeyboardInterrupt):
        show(Interrupted(), "text", publish=lambda bundle, update: published.append(bundle))  # type: ignore[arg-type]
    assert footers(published) == ["■ stopped after 0 characters"]


@pytest.mark.server
def test_a_real_interrupt_during_prefill(model_path: str) -> None:
    """SIGINT lands while the real server reads a ~1,500-token prompt: the kernel side returns at once."""
    published: list[Bundle] = []
    prompt = " ".join(f"item {i} is number {i};" for i in range(250))
    with LocalModel(model_path, ctx_size=4096) as model:
        def busy() -> bool:
            return model.metrics().get("llamacpp:requests_processing", 0.0) > 0

        def interrupt_when_busy() -> None:
            wait_until(busy, timeout=60, interval=0.01)
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

        waiter = threading.Thread(target=interrupt_when_busy)
        waiter.start()
        with pytest.raises(KeyboardInterrupt):
            show(model.stream(prompt, max_tokens=8), "markdown",
                 publish=lambda bundle, update: published.append(bundle), busy=busy)
        waiter.join(10)
        assert footers(published)[0] == PREFILL_CANCEL_NOTE
        wait_until(lambda: footers(published)[-1] == PREFILL_FREE_NOTE, timeout=120)
        assert not busy()
        assert model.generate("Hi", max_tokens=2, temperature=0.0).text  # the slot is usable again
