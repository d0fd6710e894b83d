"""Prove a llama-server build by running it: load a tiny model, decode, check the answer.

A build is only proven by running it (an AMX build at the pinned llama.cpp
compiles, installs and then segfaults on the first matrix product). The
smoke test needs no download: :func:`write_smoke_model` writes a 2-layer
llama-architecture GGUF of about 1.3 MB whose answer is known in advance.
Its token embeddings are random unit directions and its output matrix maps
token *i*'s direction to token *i + 1*, so greedy decoding counts upwards
from any prompt; the attention and feed-forward weights are small random
values (quantised to Q8_0 and Q4_0, the kernels real models use), so every
matrix product of a real forward pass runs without being able to change that
answer. A crash, a hang or a wrong count is a failed smoke test.

For a GPU backend all layers are offloaded (``-ngl 99``, logged at verbosity
4) and the log must say so (``offloaded 3/3 layers to GPU``: the two layers
and the output layer), which is where "no kernel image for this GPU" or
"invalid device function" (a gfx target that was not compiled) shows up; a
GPU build that found no device to offload to fails, as it should. The
caller's ``environ`` decides which device that is (``GGML_VK_VISIBLE_DEVICES``
for a software Vulkan device, which llama.cpp ignores otherwise).

Example:
    >>> import tempfile
    >>> path = write_smoke_model(Path(tempfile.mkdtemp()) / "smoke.gguf")
    >>> path.stat().st_size < 2_000_000
    True
    >>> SMOKE_PROMPT, expected_tokens(SMOKE_PROMPT, 3)
    ([300, 301, 302], [303, 304, 305])
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rocm_nb._exposure import free_port
from rocm_nb.binary._report import MemoryReport, parse_report

__all__ = ["SMOKE_PROMPT", "SmokeResult", "expected_tokens", "smoke_test", "write_smoke_model"]

_VOCAB = 512
_SPECIAL = 3  # <unk>, <s>, </s>
_BYTES = 256  # <0x00>…<0xFF>, so the SPM vocabulary is complete
_FIRST_WORD = _SPECIAL + _BYTES
_DIM, _FF, _HEADS, _LAYERS, _CTX = 256, 512, 4, 2, 256
_PREDICT = 6
_TIMEOUT = 60.0
_GPU_TIMEOUT = 300.0  # a first GPU load compiles its shader pipelines: lavapipe took 19 s on a quiet 2-core machine
SMOKE_PROMPT = [300, 301, 302]
"""The token ids the smoke test sends; the model must continue ``303, 304, …``."""


@dataclass(frozen=True)
class SmokeResult:
    """What a smoke test saw: passed or not, how long it took, and why it failed.

    ``returncode`` is set when the server died (negative: the signal);
    ``log_tail`` holds the server's last log lines.

    Example:
        >>> SmokeResult(True, 0.8, "decoded 6 tokens as expected").passed
        True
    """

    passed: bool
    seconds: float
    detail: str
    returncode: int | None = None
    log_tail: str = ""


def expected_tokens(prompt: Sequence[int], count: int) -> list[int]:
    """The tokens the smoke model decodes greedily after ``prompt``: it counts upwards, wrapping.

    Example:
        >>> expected_tokens([510], 3)
        [511, 259, 260]
    """
    words = _VOCAB - _FIRST_WORD
    return [_FIRST_WORD + (prompt[-1] - _FIRST_WORD + k) % words for k in range(1, count + 1)]


def write_smoke_model(path: Path, *, seed: int = 20261130) -> Path:
    """Write the smoke-test GGUF to ``path`` (deterministic for a given ``seed``) and return it.

    Example:
        >>> import tempfile, gguf
        >>> p = write_smoke_model(Path(tempfile.mkdtemp()) / "s.gguf")
        >>> gguf.GGUFReader(p).fields["general.architecture"].contents()
        'llama'
    """
    import gguf  # numpy and gguf load on first use: `import rocm_nb` stays cheap
    import numpy as np

    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((_VOCAB, _DIM)).astype(np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    embeddings = directions * np.sqrt(_DIM)  # RMS 1: the final norm leaves them as they are
    output = np.zeros((_VOCAB, _DIM), dtype=np.float32)
    words = np.arange(_FIRST_WORD, _VOCAB)
    output[np.roll(words, -1)] = directions[words]  # the logit of i + 1 peaks on token i's direction

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("rocm_nb smoke test")
    writer.add_context_length(_CTX)
    writer.add_embedding_length(_DIM)
    writer.add_block_count(_LAYERS)
    writer.add_feed_forward_length(_FF)
    writer.add_head_count(_HEADS)
    writer.add_head_count_kv(_HEADS)
    writer.add_rope_dimension_count(_DIM // _HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model("llama")
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(_BYTES)),
              *(f"▁w{i}" for i in range(_FIRST_WORD, _VOCAB))]
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * _VOCAB)
    token_type = gguf.TokenType
    writer.add_token_types([token_type.UNKNOWN, token_type.CONTROL, token_type.CONTROL,
                            *[token_type.BYTE] * _BYTES, *[token_type.NORMAL] * (_VOCAB - _FIRST_WORD)])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(False)

    def add(name: str, values: np.ndarray, kind: gguf.GGMLQuantizationType) -> None:
        writer.add_tensor(name, gguf.quants.quantize(values, kind), raw_dtype=kind)

    q8, q4 = gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0
    add("token_embd.weight", embeddings, q8)
    writer.add_tensor("output_norm.weight", np.ones(_DIM, dtype=np.float32))
    add("output.weight", output, q8)
    for layer in range(_LAYERS):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", np.ones(_DIM, dtype=np.float32))
        writer.add_tensor(f"{block}.ffn_norm.weight", np.ones(_DIM, dtype=np.float32))
        for name, shape, kind in (("attn_q", (_DIM, _DIM), q8), ("attn_k", (_DIM, _DIM), q8),
                                  ("attn_v", (_DIM, _DIM), q8), ("attn_output", (_DIM, _DIM), q8),
                                  ("ffn_gate", (_FF, _DIM), q4), ("ffn_up", (_FF, _DIM), q4),
                                  ("ffn_down", (_DIM, _FF), q4)):
            add(f"{block}.{name}.weight", (rng.standard_normal(shape) * 0.02).astype(np.float32), kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def smoke_test(binary: Path, *, gpu: bool = False, environ: Mapping[str, str] | None = None,
               timeout: float | None = None) -> SmokeResult:
    """Start ``binary`` on the smoke model, decode :data:`SMOKE_PROMPT` greedily and check the count.

    ``gpu`` offloads every layer and requires the log to confirm it. Never
    raises for a failing binary: the result says what went wrong. ``timeout``
    (default 60 s, 300 s with ``gpu``) bounds the load and the decode.

    Example:
        >>> result = smoke_test(Path("/usr/bin/false"))
        >>> result.passed, result.detail
        (False, 'llama-server exited with status 1 before it was ready')
    """
    env = dict(os.environ if environ is None else environ)
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rocm_nb-smoke-") as work:
        model = write_smoke_model(Path(work) / "smoke.gguf")
        log_path = Path(work) / "server.log"
        key = secrets.token_urlsafe(16)
        port = free_port()
        argv = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "-c", str(_CTX),
                "-ngl", "99" if gpu else "0", "--parallel", "1", "--threads", "2", "--no-warmup",
                *(["-lv", "4"] if gpu else [])]
        with log_path.open("wb") as log:
            try:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        env={**env, "LLAMA_API_KEY": key}, start_new_session=True)
            except OSError as exc:
                return SmokeResult(False, time.monotonic() - began, f"could not run {binary}: {exc.strerror or exc}")
            try:
                limit = timeout if timeout is not None else _GPU_TIMEOUT if gpu else _TIMEOUT
                detail = _decode(proc, port, key, began + limit, limit)
            finally:
                _stop(proc)
        text = log_path.read_text(errors="replace")
        tail = "\n".join(text.splitlines()[-25:])
        report = parse_report(text.splitlines())
        if detail is None and gpu:
            detail = _offload_problem(report)
        elapsed = time.monotonic() - began
        died = proc.returncode if proc.returncode is not None and proc.returncode < 0 else None
        if detail is None:
            where = (f" with {report.offloaded_layers}/{report.layers} layers on "
                     + ", ".join(device.device for device in report.gpu_devices)) if gpu else ""
            return SmokeResult(True, elapsed, f"decoded {_PREDICT} tokens as expected{where}", log_tail=tail)
        return SmokeResult(False, elapsed, detail, returncode=died if died is not None else proc.returncode,
                           log_tail=tail)


def _offload_problem(report: MemoryReport) -> str | None:
    """Why a GPU smoke test did not run on a GPU device (``None``: every layer's weights are on one)."""
    if not any(device.bytes_of("model") for device in report.gpu_devices):
        return ("no model buffer on a GPU device: the build found no GPU to use (a software Vulkan device is used "
                "only when GGML_VK_VISIBLE_DEVICES names it)")
    if report.offloaded_layers != report.layers or report.offloaded_layers is None:
        return f"only {report.offloaded_layers} of {report.layers} layers were offloaded"
    return None


def _decode(proc: subprocess.Popen[bytes], port: int, key: str, deadline: float, limit: float) -> str | None:
    """Wait for readiness, decode, compare; ``None`` when all went well, else what went wrong."""
    from rocm_nb.errors import describe_exit

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"llama-server {describe_exit(proc.returncode)[0]} before it was ready"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.05)
    else:
        return f"llama-server was not ready within {limit:.0f} s"
    body = json.dumps({"prompt": SMOKE_PROMPT, "n_predict": _PREDICT, "temperature": 0, "return_tokens": True,
                       "cache_prompt": False}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=max(1.0, deadline - time.monotonic())) as response:
            answer = json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError) as exc:
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return f"the completion request failed: {exc}"
        return f"llama-server {describe_exit(proc.returncode)[0]} while decoding"
    got = [int(t) for t in answer.get("tokens", [])]
    want = expected_tokens(SMOKE_PROMPT, _PREDICT)
    return None if got == want else f"wrong answer: decoded tokens {got}, expected {want}"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the smoke server's session: SIGTERM, a short wait, then SIGKILL."""
    from rocm_nb._process import terminate

    terminate(proc, grace=3.0, kill_wait=5.0, group=True)
