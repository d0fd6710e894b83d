"""The rule the server tests compare greedy texts by (tests/support/decoding.py): it passes near-ties, and only them."""

from __future__ import annotations

import pytest

from rocm_nb import Completion
from rocm_nb.client.logprobs import TokenProb
from tests.support.decoding import NEAR_TIE, assert_greedy_agrees

pytestmark = pytest.mark.unit


def reference(*steps: tuple[str, float, str, float]) -> Completion:
    """A greedy reference: per step the chosen token and its log-probability, then the runner-up and its."""
    tokens = [TokenProb(best, lp, [(best, lp), (alt, alt_lp)], best.encode()) for best, lp, alt, alt_lp in steps]
    return Completion("".join(t.text for t in tokens), "length", None, tokens=tokens)


SURE = -0.01, "x", -6.0
"""A step where the model was sure: its runner-up trails by about 6 nats (the median gap is 5.5)."""

REPLY = reference(("The", *SURE), (" sky", -0.70, " sea", -0.72), (" is", *SURE), (" blue", *SURE))
"""A reply with one near-tie, at its second token (0.02 nats)."""


def test_the_same_text_agrees() -> None:
    assert_greedy_agrees(["The sky is blue"], [REPLY], "cpu", "same")


def test_parting_at_a_near_tie_onto_the_runner_up_agrees() -> None:
    assert_greedy_agrees(["The sea was calm"], [REPLY], "cpu", "tipped tie")  # what follows the tie is free


def test_parting_where_the_model_was_sure_fails() -> None:
    with pytest.raises(AssertionError, match=r"parts at token 2, where the model was sure: ' is' led 'x' by 5\.99"):
        assert_greedy_agrees(["The sky was blue"], [REPLY], "cpu", "wrong")


def test_another_prompts_reply_fails() -> None:
    """Two streams mixed up: the reply of another prompt parts at once, where the model was sure."""
    with pytest.raises(AssertionError, match="prompt 1: parts at token 0"):
        assert_greedy_agrees(["The sky is blue", "Once upon a time"], [REPLY, REPLY], "cpu", "mixed up")


def test_parting_at_a_near_tie_onto_a_token_the_model_did_not_weigh_fails() -> None:
    with pytest.raises(AssertionError, match=r"parts at token 1 \(a near-tie of 0\.020 nats\) but goes on with none"):
        assert_greedy_agrees(["The dog barks"], [REPLY], "cpu", "neither tied token")


def test_a_truncated_or_a_longer_text_fails() -> None:
    with pytest.raises(AssertionError, match="parts at token 2, where the model was sure"):
        assert_greedy_agrees(["The sky"], [REPLY], "cpu", "truncated")
    with pytest.raises(AssertionError, match="goes on after the reference's 4 tokens"):
        assert_greedy_agrees(["The sky is blue today"], [REPLY], "cpu", "longer")


def test_the_bound_is_a_near_tie() -> None:
    wide = reference(("The", *SURE), (" sky", -0.5, " sea", -0.5 - NEAR_TIE - 0.01))
    with pytest.raises(AssertionError, match="where the model was sure"):
        assert_greedy_agrees(["The sea"], [wide], "cpu", "just over the bound")
    assert_greedy_agrees(["The sea"], [reference(("The", *SURE), (" sky", -0.5, " sea", -0.5 - NEAR_TIE))], "cpu",
                         "at the bound")


def test_a_gpu_backend_compares_a_prefix() -> None:
    assert_greedy_agrees(["The sky is bright"], [REPLY], "rocm", "prefix")  # 12 characters: "The sky is b"
    with pytest.raises(AssertionError, match="the first 12 characters must agree"):
        assert_greedy_agrees(["The sea is blue"], [REPLY], "rocm", "prefix")
