"""Strict fakes of vLLM and Ollama: small ASGI apps, served by uvicorn on 127.0.0.1 in a thread.

Reality cannot be had here (neither runs on this machine without a GPU or a
download), so each fake answers with the request and response shapes its
engine documents, and is stricter than the real one where that finds bugs:

* a generation must name a served ``model`` (older vLLM, Ollama, Ray Serve
  LLM and llama-swap all need it): else the engine's error reply;
* a field the engine does not take is ignored, as the real one does, but
  logged in ``app.state.unknown`` so a test can assert none was sent;
* usage comes in a stream only when asked with ``stream_options.include_usage``.

Sources of the shapes:

* vLLM: https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html
  (OpenAI's chat and completions API plus the "extra parameters" ``top_k``,
  ``min_p``, ``repetition_penalty``…, ``GET /version``, usage in a stream
  only with ``stream_options.include_usage``; errors as
  ``{"object": "error", "message", "type", "code"}``).
* Ollama: https://docs.ollama.com/api/openai-compatibility ("Supported
  request fields" of ``/v1/chat/completions`` and ``/v1/completions``;
  ``GET /api/version`` from https://docs.ollama.com/api answers
  ``{"version": "0.12.3"}``; errors as ``{"error": {"message", "type"}}``).
* The stream itself (``chat.completion.chunk`` / ``text_completion``
  chunks, a last chunk with ``choices: []`` and ``usage``, ``data: [DONE]``)
  is OpenAI's streaming format, which both follow.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rocm_nb._exposure import free_port
from tests.support.processes import wait_until

_OPENAI_CHAT = {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
                "top_p", "seed", "stop", "response_format", "logprobs", "top_logprobs", "n", "presence_penalty",
                "frequency_penalty", "tools", "tool_choice", "user", "logit_bias"}
_OPENAI_COMPLETION = {"model", "prompt", "stream", "stream_options", "max_tokens", "temperature", "top_p", "seed",
                      "stop", "logprobs", "n", "presence_penalty", "frequency_penalty", "echo", "suffix", "user"}
_VLLM_EXTRA = {"top_k", "min_p", "repetition_penalty", "structured_outputs", "chat_template_kwargs",
               "response_format", "ignore_eos", "min_tokens"}


@dataclass(frozen=True)
class Engine:
    """One engine's documented surface: how it is recognised, what it serves, which fields it takes."""

    name: str
    version_path: str
    model: str
    chat_fields: frozenset[str]
    completion_fields: frozenset[str]


VLLM = Engine("vllm", "/version", "Qwen/Qwen3-0.6B", frozenset(_OPENAI_CHAT | _VLLM_EXTRA),
              frozenset(_OPENAI_COMPLETION | _VLLM_EXTRA))
OLLAMA = Engine("ollama", "/api/version", "llama3.2:1b",
                frozenset({"model", "messages", "frequency_penalty", "presence_penalty", "response_format", "seed",
                           "stop", "stream", "stream_options", "temperature", "top_p", "max_tokens", "tools",
                           "reasoning_effort", "reasoning", "tool_choice", "logprobs", "top_logprobs"}),
                frozenset({"model", "prompt", "frequency_penalty", "presence_penalty", "seed", "stop", "stream",
                           "stream_options", "temperature", "top_p", "max_tokens", "suffix"}))

REPLY = ["The", " answer", " is", " four", "."]


@dataclass
class Log:
    """What the fake saw: each generation's body, and the fields it did not take (``(path, field)``)."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    unknown: list[tuple[str, str]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


def _error(engine: Engine, status: int, message: str) -> JSONResponse:
    if engine is VLLM:
        return JSONResponse({"object": "error", "message": message, "type": "BadRequestError", "param": None,
                             "code": status}, status_code=status)
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                   "code": None}}, status_code=status)


def app_for(engine: Engine, log: Log) -> Starlette:
    """The fake ``engine`` as an ASGI app that records into ``log``."""

    async def version(request: Request) -> Response:
        return JSONResponse({"version": "0.9.2" if engine is VLLM else "0.12.3"})

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": engine.model, "object": "model", "created": 1700000000, "owned_by": engine.name}]})

    async def generate(request: Request) -> Response:
        chat = request.url.path.endswith("/chat/completions")
        body = await request.json()
        log.bodies.append(body)
        log.headers.append(dict(request.headers))
        allowed = engine.chat_fields if chat else engine.completion_fields
        log.unknown += [(request.url.path, name) for name in body if name not in allowed]
        if "model" not in body:
            return _error(engine, 400, "model is required" if engine is OLLAMA else
                          "[{'type': 'missing', 'loc': ('body', 'model'), 'msg': 'Field required'}]")
        if body["model"] != engine.model:
            return _error(engine, 404, f"The model `{body['model']}` does not exist." if engine is VLLM
                          else f'model "{body["model"]}" not found, try pulling it first')
        if not body.get("stream"):
            return _error(engine, 400, "this fake streams only (rocm_nb always streams)")
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(_events(engine, chat, usage), media_type="text/event-stream")

    async def not_found(request: Request) -> Response:
        return JSONResponse({"detail": "Not Found"}, status_code=404)

    return Starlette(routes=[
        Route(engine.version_path, version),
        Route("/v1/models", list_models),
        Route("/v1/chat/completions", generate, methods=["POST"]),
        Route("/v1/completions", generate, methods=["POST"]),
        Route("/props", not_found),
    ])


async def _events(engine: Engine, chat: bool, usage: bool) -> AsyncIterator[bytes]:
    common = {"id": "cmpl-1", "created": int(time.time()), "model": engine.model,
              "object": "chat.completion.chunk" if chat else "text_completion"}
    for index, piece in enumerate(REPLY):
        finish = "stop" if index == len(REPLY) - 1 else None
        choice: dict[str, Any] = ({"index": 0, "delta": {"content": piece}, "finish_reason": finish} if chat
                                  else {"index": 0, "text": piece, "finish_reason": finish})
        yield f"data: {json.dumps({**common, 'choices': [choice]})}\n\n".encode()
    if usage:
        counts = {"prompt_tokens": 12, "completion_tokens": len(REPLY), "total_tokens": 12 + len(REPLY)}
        yield f"data: {json.dumps({**common, 'choices': [], 'usage': counts})}\n\n".encode()
    yield b"data: [DONE]\n\n"


@contextmanager
def serve(engine: Engine, tls: tuple[Path, Path] | None = None) -> Iterator[tuple[str, Log]]:
    """Run the fake ``engine`` on 127.0.0.1 (over HTTPS with ``tls``: certificate, key); yield its URL and log."""
    log = Log()
    port = free_port("127.0.0.1")
    cert, key = (str(tls[0]), str(tls[1])) if tls else (None, None)
    server = uvicorn.Server(uvicorn.Config(app_for(engine, log), host="127.0.0.1", port=port, log_level="warning",
                                           ssl_certfile=cert, ssl_keyfile=key))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=30)
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}", log
    finally:
        server.should_exit = True
        thread.join(10)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself (openssl), and its key: the server's and the CA bundle."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key
