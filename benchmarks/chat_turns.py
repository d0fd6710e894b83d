"""Time to first token at turn 10 of a chat: rocm_nb against a raw SSE client, same conversation, same server.

Later turns of a chat attend to a longer context, so turn 10's first token
comes later than turn 1's on any client (raw llama-server with its prompt
cache on: turn 10 ≈ 2.4–3.0× turn 1 on the 2-core test machine). What
rocm_nb controls is its own overhead, so the figure compares like with like:
each side runs the whole ten-turn conversation itself (greedy, so both build
the same messages, and the server's prompt cache holds turns 1–9 for both),
and turn 10's time to first token is compared. Sides alternate which goes
first; an unrelated prompt clears the slot between them.
"""

from __future__ import annotations

import json
import statistics
import time

from common import GREEDY, RAW, REPS, Row, spread

from rocm_nb import LocalModel

SYSTEM = "You are a patient teacher."
TURNS = 10


def _question(turn: int) -> str:
    return f"Question {turn + 1}: tell me one fact about the sea."


def raw_chat(base_url: str, api_key: str, messages: list[dict[str, str]], max_tokens: int) -> tuple[float, str]:
    """Minimal streaming chat client: (time to first content piece in s, the reply)."""
    body = {"messages": messages, "max_tokens": max_tokens, "stream": True, **GREEDY}
    began = time.perf_counter()
    first = None
    text = []
    with RAW.stream("POST", f"{base_url}/v1/chat/completions", json=body,
                    headers={"Authorization": f"Bearer {api_key}"}) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            piece = (choices[0].get("delta") or {}).get("content")
            if piece:
                first = first if first is not None else time.perf_counter() - began
                text.append(piece)
    assert first is not None, "the raw client got no text"
    return first, "".join(text)


def conversation(model: LocalModel, side: str) -> tuple[float, list[str]]:
    """All ten turns by one side: (turn 10's time to first token, the replies)."""
    messages = [{"role": "system", "content": SYSTEM}]
    replies, ttft = [], 0.0
    for turn in range(TURNS):
        messages.append({"role": "user", "content": _question(turn)})
        if side == "raw":
            ttft, text = raw_chat(model.base_url, model.api_key, messages, 48)
        else:
            reply = model.chat(messages, max_tokens=48, **GREEDY)
            assert reply.ttft_s is not None
            ttft, text = reply.ttft_s, reply.text
        messages.append({"role": "assistant", "content": text})
        replies.append(text)
    model.generate("Reset the cache with something unrelated.", max_tokens=1)
    return ttft, replies


def bench_chat_turns(model: LocalModel) -> list[Row]:
    ratios, raw_ms = [], []
    for rep in range(max(3, REPS // 2)):
        got = {side: conversation(model, side) for side in (("ours", "raw") if rep % 2 else ("raw", "ours"))}
        assert got["ours"][1] == got["raw"][1], "both sides must hold the same conversation"
        ratios.append(got["ours"][0] / got["raw"][0])
        raw_ms.append(got["raw"][0] * 1000)
    return [Row("`chat()` turn 10 time to first token ÷ raw SSE client's turn 10, same conversation (prompt cache)",
                "≤ 1.05", spread(ratios), statistics.median(ratios) <= 1.05,
                f"raw turn 10 {statistics.median(raw_ms):.0f} ms")]
