"""The GPU path for real: llama-server's Vulkan build on this machine's Vulkan device.

``make test`` builds the Vulkan llama-server (``make server-vulkan``) next to
the CPU one, and without a GPU the device is Mesa's lavapipe, a conformant
software Vulkan device: everything llama.cpp does on a GPU (offload, device
buffers, shaders, its memory report) happens for real, at about a second a
token. So the models here have small contexts and the requests few tokens,
and each model loads once per module.

Greedy text on the device is compared with the CPU backend: floating-point
order differs between backends, so what is asserted is what was measured to
hold (the first tokens of fixed prompts, and top-1 agreement along the CPU's
own continuation), not equality of long replies.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from rocm_nb import Completion, LocalModel
from rocm_nb._units import human_bytes
from rocm_nb.binary import ServerBinary, find_server
from rocm_nb.binary._smoke import smoke_test
from rocm_nb.binary._vulkan_sdk import fetch_debian_headers
from rocm_nb.cli import main
from rocm_nb.hardware import GPU, detect
from rocm_nb.hardware._vulkan import HeaderVersion, version_in
from tests.support.decoding import NEAR_TIE
from tests.support.metrics import busy_slots

pytestmark = pytest.mark.vulkan

CTX = 512
LAVAPIPE = re.compile(r"^llvmpipe \(LLVM [\d.]+, \d+ bits\)$")
PROMPTS = ("The capital of France is", "Once upon a time", "The sun rises in the")
"""Short prompts (a handful of tokens each: prefill runs at about a token a second on lavapipe) whose greedy texts
part between the backends within six tokens (measured), so the test sees how they part."""


def load(**options: object) -> LocalModel:
    """A Vulkan model on the default model, started (the software device's warning is expected and checked apart)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Vulkan device \d+, .* is a software device")
        model = LocalModel(backend="vulkan", ctx_size=CTX, **options)  # type: ignore[arg-type]
    return model.start()


@pytest.fixture(scope="module")
def vulkan() -> Iterator[LocalModel]:
    """All layers on the Vulkan device, two slots (for map())."""
    model = load(parallel=2)
    yield model
    model.close()


@pytest.fixture(scope="module")
def cpu() -> Iterator[LocalModel]:
    """The same model, context and slots on the CPU backend: the reference."""
    with LocalModel(backend="cpu", ctx_size=CTX, parallel=2) as model:
        yield model


def lavapipe() -> GPU:
    """This machine's software Vulkan device, as vulkaninfo reports it (its memory depends on Mesa's version)."""
    [device] = detect(backend="vulkan").visible_gpus
    return device


@pytest.fixture(scope="module")
def vulkan_binary() -> ServerBinary:
    return find_server(backend="vulkan", strict=True)


def test_auto_detection_chooses_the_cpu_and_vulkan_is_taken_only_when_asked(
        vulkan: LocalModel, monkeypatch: pytest.MonkeyPatch) -> None:
    auto = detect()
    assert auto.backend == "cpu" and auto.gpus == ()
    assert LocalModel().binary.backend == "cpu"  # the Vulkan install in the cache is not picked by default
    asked = detect(backend="vulkan")
    [device] = asked.visible_gpus
    assert LAVAPIPE.match(device.name) and device.device_type == "software" and asked.visible_devices == "0"
    assert vulkan.backend == "vulkan" and ("GGML_VK_VISIBLE_DEVICES", "0") in vulkan.config.env
    with pytest.warns(UserWarning, match=r"Vulkan device 0, llvmpipe .* is a software device \(Mesa's lavapipe "
                                         r"runs Vulkan on the CPU\)"):
        LocalModel(backend="vulkan", ctx_size=CTX)
    monkeypatch.setenv("ROCM_NB_BACKEND", "vulkan")
    with pytest.warns(UserWarning, match=r"is a software device"):
        assert LocalModel(ctx_size=CTX).binary.backend == "vulkan"


def test_doctor_prints_the_vulkan_device_and_says_it_is_not_auto_selected(
        capsys: pytest.CaptureFixture[str]) -> None:
    main(["doctor"])
    out = capsys.readouterr().out
    assert "\nHardware\n  backend: cpu\n" in out
    vulkan = out.split("\nVulkan\n")[1].split("\n\n")[0]
    total = f"{(lavapipe().vram_total or 0) / 2**30:.1f} GiB"  # Mesa 22 (Debian 12): 2 GiB; later Mesa: a share of RAM
    assert re.search(rf"Vulkan 0: llvmpipe \(LLVM [\d.]+, \d+ bits\) \(software, mesa\) · {re.escape(total)} of "
                     r"device memory, [\d.]+ GiB free", vulkan)
    assert "never auto-selected: a software device: it runs on the CPU, more slowly than llama.cpp's own CPU " \
           "backend" in vulkan


def test_the_install_was_proven_on_the_device_and_is_keyed_by_the_backend(
        vulkan_binary: ServerBinary, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["server", "install", "--backend", "vulkan", "--fetch-vulkan-headers"]) == 0  # installed: no build
    assert capsys.readouterr().out == f"llama-server ready: {vulkan_binary.path} (vulkan, {vulkan_binary.version})\n"
    manifest = json.loads((vulkan_binary.path.parent / "manifest.json").read_text())
    assert vulkan_binary.path.parent.name.startswith("vulkan-") and manifest["backend"] == "vulkan"
    assert "-DGGML_VULKAN=ON" in manifest["flags"] and LAVAPIPE.match(manifest["smoke_device"])
    assert any(flag.startswith("-DVulkan_INCLUDE_DIR=") for flag in manifest["flags"])
    if os.uname().machine == "x86_64" and manifest["variant"] == "native":  # the AMX-safe flags of the CPU part
        assert "-DCMAKE_CXX_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in manifest["flags"]
    # given by path (no manifest read), it is still known for a Vulkan build, though it lists no device by default
    assert find_server(vulkan_binary.path).backend == "vulkan"
    device = {**os.environ, "GGML_VK_VISIBLE_DEVICES": "0"}
    proof = smoke_test(vulkan_binary.path, gpu=True, environ=device)
    assert proof.passed and proof.detail == "decoded 6 tokens as expected with 3/3 layers on Vulkan0"
    hidden = {k: v for k, v in os.environ.items() if k != "GGML_VK_VISIBLE_DEVICES"}
    refused = smoke_test(vulkan_binary.path, gpu=True, environ=hidden)  # llama.cpp ignores a CPU-type device
    assert not refused.passed and "no model buffer on a GPU device" in refused.detail


def within(estimate: int, measured: int, tolerance: float = 0.10) -> bool:
    return abs(estimate - measured) <= tolerance * measured


def test_full_offload_matches_the_plan(vulkan: LocalModel) -> None:
    status, fit = vulkan.status(), vulkan.fit
    assert status.offloaded_layers == status.layers == fit.gpu_layers == fit.estimate.layers
    assert status.vram_bytes is not None and within(fit.estimate.vram, status.vram_bytes)
    assert status.projected_vram_bytes is not None and within(status.projected_vram_bytes, status.vram_bytes)
    assert status.vram_total_bytes == lavapipe().vram_total  # lavapipe's one heap, from vulkaninfo
    [device] = vulkan.server.memory_report().gpu_devices
    assert device.device == "Vulkan0"
    assert within(fit.estimate.weights_vram, device.bytes_of("model"), 0.02)
    assert fit.estimate.kv_vram == device.bytes_of("KV")  # the same formula as llama.cpp's, to the byte


def test_a_gpu_memory_cap_offloads_only_what_fits_and_the_server_agrees(bare_shell: InteractiveShell) -> None:
    model = load(gpu_memory="64MiB")
    try:
        status, fit = model.status(), model.fit
        assert 0 < fit.gpu_layers < fit.estimate.layers and fit.estimate.vram <= 64 * 2**20
        assert "gpu_memory=64 MiB allows" in fit.note
        assert status.offloaded_layers == fit.gpu_layers  # the server's `offloaded N/M layers`: N as planned
        assert status.vram_bytes is not None and within(fit.estimate.vram, status.vram_bytes)
        assert status.projected_vram_bytes is not None and within(status.projected_vram_bytes, status.vram_bytes)
        assert model.generate("The capital of France is", max_tokens=3, temperature=0).text.strip()
        with capture_output() as shown, warnings.catch_warnings():  # the same options through the magic
            warnings.filterwarnings("ignore", message=r"Vulkan device \d+, .* is a software device")
            bare_shell.run_line_magic("rocm_load", f"smollm2-135m --backend vulkan --device 0 --gpu-memory 64MiB "
                                                   f"--ctx-size {CTX} --alias capped")
        said = str(shown.outputs[-1].data["text/plain"])
        assert f"backend vulkan · {fit.gpu_layers} of {status.layers} layers on the GPU (the server's report)" in said
        magics = bare_shell.magics_manager.registry["RocmMagics"]
        assert magics.models["capped"].pid == model.pid  # the same options: the same server, attached to
        bare_shell.run_line_magic("rocm_stop", "capped")
    finally:
        model.close()


def test_the_monitor_shows_the_device_memory_the_server_reported(vulkan: LocalModel) -> None:
    status = vulkan.status()
    monitor = vulkan.monitor()
    try:
        gpu, process = monitor.sections
        assert gpu["title"].startswith("GPU 0 · llvmpipe")
        assert gpu["note"] == "memory: this model's buffers (llama-server's report); total from vulkaninfo"
        vram = gpu["bars"][0]
        total = lavapipe().vram_total or 0
        assert vram["label"] == "VRAM" and vram["text"].endswith(f"/ {human_bytes(total)}")
        assert vram["fraction"] == pytest.approx((status.vram_bytes or 0) / total)
        assert "CPU stand-in" not in process["title"]
    finally:
        monitor.close()


def test_greedy_text_agrees_with_the_cpu_backend(vulkan: LocalModel, cpu: LocalModel) -> None:
    """The same first tokens; where the two greedy texts part, it is a swap of two near-tied candidates.

    Measured on lavapipe (docs/vulkan.md): the backends' log-probabilities
    differ by up to about 0.2 nats, so a CPU top-1 that leads its runner-up by
    less than that may lose on the device. Each prompt here parts within six
    tokens, always as such a swap.
    """
    for prompt in PROMPTS:
        reference = cpu.generate(prompt, max_tokens=6, temperature=0, logprobs=True).tokens
        device = vulkan.generate(prompt, max_tokens=6, temperature=0, logprobs=True).tokens
        assert reference and device and len(reference) == len(device) == 6
        same = [a.text == b.text for a, b in zip(reference, device, strict=True)]
        k = same.index(False) if False in same else len(same)
        assert k >= 1, f"{prompt!r}: the first token differs: {reference[0].text!r} vs {device[0].text!r}"
        if k < len(same):
            for ours, theirs in ((device[k], reference[k]), (reference[k], device[k])):
                (first, lead), (second, runner_up) = ours.top[:2]
                assert (first, second) == (ours.text, theirs.text), f"{prompt!r} token {k}: not a swap of the top two"
                assert lead - runner_up <= NEAR_TIE, f"{prompt!r} token {k}: {lead - runner_up:.2f} nats apart"
    assert cpu.generate("The capital of France is", max_tokens=2, temperature=0).text == " Paris."
    assert vulkan.generate("The capital of France is", max_tokens=2, temperature=0).text == " Paris."


def test_streaming_chat_and_logprobs_on_the_device(vulkan: LocalModel) -> None:
    pieces = list(vulkan.stream("The capital of France is", max_tokens=4, temperature=0))
    whole = vulkan.generate("The capital of France is", max_tokens=4, temperature=0)
    assert len(pieces) >= 2 and "".join(pieces) == whole.text
    reply = vulkan.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}],
                        max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)  # a short system prompt:
    # prefill costs about a second a token here, and the template's default one is about 20 tokens
    assert reply.text and reply.finish_reason in ("stop", "length") and reply.tokens
    for token in reply.tokens:
        assert token.top[0][0] == token.text and math.isclose(token.top[0][1], token.logprob, abs_tol=1e-4)
        assert 0 < token.prob <= 1


def test_map_runs_over_the_devices_slots(vulkan: LocalModel) -> None:
    before = vulkan.metrics()
    results = vulkan.map(["Red, green and", "Apples, pears and"], chat=False, max_tokens=3, temperature=0,
                         progress=False)
    assert all(isinstance(r, Completion) and r.text for r in results)
    assert busy_slots(vulkan, before) > 1.5  # both slots decoded together, on the device


def test_embeddings_on_the_device_match_the_cpus() -> None:
    texts = ["A cat sat on the mat.", "GPUs multiply matrices."]
    with LocalModel("minilm", embedding=True, backend="cpu", ctx_size=CTX) as reference:
        expected = np.asarray(reference.embed(texts))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Vulkan device \d+, .* is a software device")
        model = LocalModel("minilm", embedding=True, backend="vulkan", ctx_size=CTX)
    with model:
        assert model.status().offloaded_layers == model.status().layers
        got = np.asarray(model.embed(texts))
    assert got.shape == expected.shape
    assert np.all(np.sum(got * expected, axis=1) > 0.999)  # unit vectors: cosine similarity


def test_debian_13_headers_are_fetched_without_touching_the_systems_apt(tmp_path: Path) -> None:
    """The fetch make test's setup relies on, from Debian's archive, into a cache of its own."""
    lists = sorted(p.name for p in Path("/var/lib/apt/lists").iterdir())
    status = Path("/var/lib/dpkg/status").stat().st_mtime_ns
    include = fetch_debian_headers({**os.environ, "ROCM_NB_CACHE": str(tmp_path / "cache")})
    assert version_in(include) == HeaderVersion(309, "1.4") and (include.parent / "lib").is_dir()
    assert sorted(p.name for p in Path("/var/lib/apt/lists").iterdir()) == lists
    assert Path("/var/lib/dpkg/status").stat().st_mtime_ns == status  # nothing was installed system-wide


def test_a_router_runs_its_children_on_the_device() -> None:
    from rocm_nb import LocalRouter
    from rocm_nb.server._registry import ServerRegistry

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Vulkan device \d+, .* is a software device")
        router = LocalRouter(["smollm2-135m"], backend="vulkan", ctx_size=CTX, registry=ServerRegistry())
    with router:
        assert router.backend == "vulkan" and ("GGML_VK_VISIBLE_DEVICES", "0") in router.config.env
        assert router.chat(PROMPTS[0], max_tokens=2, temperature=0.0).text
        offloads = [re.search(r"offloaded (\d+)/(\d+) layers to GPU", line) for line in router.logs()]
        [(done, layers)] = {match.groups() for match in offloads if match}  # the child's own log, in the router's
        assert done == layers == str(router.fits["SmolLM2-135M-Instruct.Q4_1"].gpu_layers)
