"""What an image costs: time to first token with one image ÷ without it, and the bytes a large photo takes.

**Time to first token** runs on the test model (tests/support/vision.py: the
default model with a tiny ``mlp`` projector of random weights, 32-pixel
images, 16 tokens each). Each repetition asks the same question four ways,
in a rotated order: through ``model.chat_stream()`` with and without one
224×224 image (timed from the call, so decoding, scaling and encoding the
image count), and through a raw httpx SSE client with and without the same
image already encoded (the request rocm_nb sent). The prompt cache is off
(``cache_prompt: false``), so every request reads its whole prompt. Beside
the wall-clock ratios: the server's own prompt time (its ``timings``) with ÷
without, and the time ``user_message()`` takes to scale and encode the image.

**Bytes sent** are the JSON request bodies for one 4000×3000 photo (a
deterministic synthetic one: smooth colour gradients with sensor-like
noise, which compresses as a photo does, not as a flat test pattern):
encoded as PNG at full size (what sending the pixels as they are costs),
rocm_nb's encoding without scaling, and rocm_nb's scaled to SmolVLM's limit
(2048 pixels, what its projector file gives) and to the test model's (32).

Run alone with ``BENCH_ONLY=vision .venv/bin/python benchmarks/bench.py``.
"""

from __future__ import annotations

import base64
import io
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import NO_TARGET, RAW, REPS, Row, spread
from PIL import Image

from rocm_nb import LocalModel
from rocm_nb.client.images import ImageLimit, encode, image_part
from tests.support.vision import write_tiny_vlm

QUESTION = "What trend does this show?"
OPTIONS: dict[str, Any] = {"max_tokens": 4, "temperature": 0.0, "seed": 42, "cache_prompt": False}


def picture(width: int, height: int, seed: int) -> np.ndarray:
    """A photo-like image: colour gradients and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(x / (width / 3) + c) * np.cos(y / (height / 2) - c) for c in (0.0, 1.0, 2.0)],
                    axis=-1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def ours(model: LocalModel, images: list[Any]) -> tuple[float, float]:
    """Time to first token from the call, and the server's own prompt time (both in s)."""
    began = time.perf_counter()
    with model.chat_stream(QUESTION, images=images, **OPTIONS) as stream:
        pieces = iter(stream)
        next(pieces)
        first = time.perf_counter() - began
        for _ in pieces:
            pass
    assert stream.completion is not None and stream.completion.timings is not None
    return first, stream.completion.timings.prompt_ms / 1000


def raw(model: LocalModel, content: Any) -> tuple[float, float]:
    """The same as :func:`ours` through a bare SSE client (``content`` already encoded)."""
    body = {"messages": [{"role": "user", "content": content}], "stream": True, **OPTIONS}
    headers = {"Authorization": f"Bearer {model.api_key}"}
    began = time.perf_counter()
    first = prompt = None
    with RAW.stream("POST", f"{model.base_url}/v1/chat/completions", json=body, headers=headers) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[6:])
                if first is None and event["choices"] and event["choices"][0].get("delta", {}).get("content"):
                    first = time.perf_counter() - began
                prompt = event.get("timings", {}).get("prompt_ms", prompt)
    assert first is not None and prompt is not None, "the raw stream ended without text or timings"
    return first, prompt / 1000


def bench_ttft() -> list[Row]:
    image = picture(224, 224, 1)
    with tempfile.TemporaryDirectory() as folder:
        model_path, mmproj = write_tiny_vlm(Path(folder))
        with LocalModel(model_path, mmproj=mmproj, ctx_size=2048) as model:
            sent = model.user_message(QUESTION, images=[image])["content"]
            runs: dict[str, list[tuple[float, float]]] = {"ours image": [], "ours text": [], "raw image": [],
                                                          "raw text": []}
            calls = {"ours image": lambda: ours(model, [image]), "ours text": lambda: ours(model, []),
                     "raw image": lambda: raw(model, sent), "raw text": lambda: raw(model, QUESTION)}
            for call in calls.values():
                call()  # warm up
            names = list(calls)
            for rep in range(REPS):
                for name in names[rep % 4:] + names[:rep % 4]:
                    runs[name].append(calls[name]())
            encoding = []
            for _ in range(REPS):
                began = time.perf_counter()
                model.user_message(QUESTION, images=[image])
                encoding.append(time.perf_counter() - began)

    def ratio(a: str, b: str, which: int) -> list[float]:
        return [x[which] / y[which] for x, y in zip(runs[a], runs[b], strict=True)]

    return [Row("time to first token, `chat()` with one 224×224 image ÷ without it (test model: 16 image tokens)",
                NO_TARGET, spread(ratio("ours image", "ours text", 0)), True,
                f"raw llama-server, same requests: {spread(ratio('raw image', 'raw text', 0))}; the server's own "
                f"prompt time with ÷ without: {spread(ratio('ours image', 'ours text', 1))}; scaling and encoding "
                f"the image: {spread(encoding, ' ms', 1000)}; time to first token without it "
                f"{statistics.median(r[0] for r in runs['ours text']) * 1000:.0f} ms")]


def body_bytes(url: str) -> int:
    return len(json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]}]}))


def bench_bytes() -> list[Row]:
    photo = picture(4000, 3000, 2)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, "PNG")
    as_png = body_bytes("data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode())
    unscaled = body_bytes(encode(photo, ImageLimit(max_edge=None)).url)
    smolvlm = encode(photo, ImageLimit(max_edge=2048))
    tiny = body_bytes(image_part(photo, ImageLimit(max_edge=32))["image_url"]["url"])
    return [Row("bytes sent for a 4000×3000 photo: full-size PNG ÷ scaled to the projector", NO_TARGET,
                f"{as_png / body_bytes(smolvlm.url):.0f}× for SmolVLM (2048 px), {as_png / tiny:,.0f}× for the "
                "test model (32 px)", True,
                f"full-size PNG {as_png / 2**20:.1f} MiB; rocm_nb unscaled (JPEG, quality 90) "
                f"{unscaled / 2**20:.1f} MiB; scaled to 2048×1536 ({smolvlm.format.upper()}) "
                f"{body_bytes(smolvlm.url) / 2**20:.2f} MiB; to 32×24 {tiny / 1024:.1f} KiB")]


def bench_vision() -> list[Row]:
    return bench_bytes() + bench_ttft()

