"""A vision model on the real llama-server: the tiny projector of tests/support/vision.py on the default model.

What is asserted holds whatever the weights: the server loads the projector
and says it takes images, an image costs its tokens, different pixels change
the logits, and every way of getting it wrong gives an error that says what
to do. Answer quality is not tested (the weights are random).
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from rocm_nb import Completion, ImagesNotSupported, LocalModel, ProjectorMismatch, ServerStartError, connect
from rocm_nb._lease import ModelState
from rocm_nb.modelfiles.catalog import CATALOGUE, pull, resolve_model
from rocm_nb.server._registry import ServerRegistry
from tests.support.gguf_files import hf_snapshot
from tests.support.vision import IMAGE_TOKENS, write_projector, write_tiny_vlm

matplotlib.use("Agg")
from matplotlib import pyplot as plt

pytestmark = pytest.mark.server

GREEDY = {"temperature": 0.0, "seed": 3, "max_tokens": 1, "cache_prompt": False}
QUESTION = "What trend does this show?"
NOW = datetime.datetime.now(tz=datetime.UTC)  # an upload's last_modified, as ipywidgets gives it


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_tiny_vlm(tmp_path_factory.mktemp("vlm"))


@pytest.fixture(scope="module")
def vision(files: tuple[Path, Path]) -> Iterator[LocalModel]:
    model, mmproj = files
    with LocalModel(model, mmproj=mmproj, ctx_size=2048) as m:
        yield m


def halves() -> np.ndarray:
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, :32] = 255
    return image


def first_token(reply: Completion) -> dict[str, float]:
    assert reply.tokens is not None
    return dict(reply.tokens[0].top)


def test_the_server_loads_the_projector_and_says_it_takes_images(vision: LocalModel, files: tuple[Path, Path]) -> None:
    assert vision.projector is not None and vision.projector.path == files[1].resolve()
    assert vision.config.argv(1)[-2:] == ["--mmproj", str(files[1])]
    assert vision.capabilities.images is True
    assert vision.props()["modalities"]["vision"] is True
    assert vision.status().images is True
    assert "set aside first for the image projector" in vision.fit.note


def test_an_image_costs_its_tokens_in_the_prompt(vision: LocalModel) -> None:
    fig, ax = plt.subplots(figsize=(3, 2), dpi=60)
    ax.plot([1, 2, 3], [3, 1, 2])
    text_only = vision.chat(QUESTION, **GREEDY)
    with_figure = vision.chat(QUESTION, images=[fig], **GREEDY)
    plt.close(fig)
    assert text_only.usage is not None and with_figure.usage is not None
    assert with_figure.usage.prompt_tokens - text_only.usage.prompt_tokens == IMAGE_TOKENS
    assert vision.projector is not None and vision.projector.image_tokens == IMAGE_TOKENS
    assert with_figure.finish_reason == "length"


def test_different_images_change_the_first_tokens_logprobs(vision: LocalModel) -> None:
    probs = {"logprobs": True, "top_logprobs": 5, **GREEDY}
    light = first_token(vision.chat(QUESTION, images=[halves()], **probs))
    again = first_token(vision.chat(QUESTION, images=[halves()], **probs))
    grey = first_token(vision.chat(QUESTION, images=[np.full((64, 64, 3), 0.5)], **probs))
    assert again.keys() == light.keys() and all(abs(again[t] - light[t]) < 1e-3 for t in light)  # same pixels
    shared = light.keys() & grey.keys()
    assert light.keys() != grey.keys() or max(abs(light[t] - grey[t]) for t in shared) > 0.05


def test_a_message_with_image_parts_and_its_history(vision: LocalModel) -> None:
    kept = vision.user_message(QUESTION, images=[halves()])
    history = [kept, {"role": "assistant", "content": "It rises."},
               {"role": "user", "content": [{"type": "image", "image": np.full((40, 40), 0.2)},
                                            {"type": "text", "text": "And this one?"}]}]
    reply = vision.chat(history, **GREEDY)
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 2 * IMAGE_TOKENS  # both images are in the prompt
    assert vision.chat([kept], **GREEDY).usage == vision.chat(QUESTION, images=[halves()], **GREEDY).usage


async def test_async_chat_takes_images(vision: LocalModel) -> None:
    reply = await vision.achat(QUESTION, images=[halves()], **GREEDY)
    assert reply.usage is not None and reply.usage.prompt_tokens > IMAGE_TOKENS


def test_a_model_without_a_projector_refuses_images_before_any_request(model_path: str) -> None:
    text_only = LocalModel(model_path, registry=ServerRegistry())
    for attempt in (lambda: text_only.chat(QUESTION, images=[halves()]),
                    lambda: text_only.chat([{"role": "user", "content": [{"type": "image", "image": halves()}]}]),
                    lambda: text_only.user_message(QUESTION, images=[halves()]),
                    lambda: text_only.map([[text_only_message()]], progress=False)):
        with pytest.raises(ImagesNotSupported, match=r"loaded without an image projector.*mmproj="):
            attempt()
    assert text_only.state is ModelState.NEW  # refused before any server was started, let alone asked
    assert text_only.status().images is False


def text_only_message() -> dict[str, object]:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}


def test_a_connected_server_without_vision_is_quoted(model: LocalModel) -> None:
    client = connect(model.base_url, api_key=model.api_key)
    assert client.capabilities.images is False
    with pytest.raises(ImagesNotSupported, match='it said: "image input is not supported') as refused:
        client.chat(QUESTION, images=[halves()], max_tokens=4)
    assert refused.value.status_code is not None and "--mmproj" in str(refused.value)
    assert client.status().images is False
    client.close()


def test_a_bad_image_is_named_before_any_request(vision: LocalModel, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    served = vision.metrics().get("llamacpp:prompt_tokens_total")
    with pytest.raises(ValueError, match=re.escape(f"cannot read the file {broken} as an image")):
        vision.chat(QUESTION, images=[broken])
    with pytest.raises(TypeError, match="images= takes a file path"):
        vision.chat(QUESTION, images=[{"pixels": []}])
    assert vision.metrics().get("llamacpp:prompt_tokens_total") == served


def test_a_projector_for_another_model_is_refused_with_the_servers_reason(model_path: str, tmp_path: Path) -> None:
    other = write_projector(tmp_path / "mmproj-other.gguf", projection_dim=64)  # a 64-wide text model's projector
    mismatched = LocalModel(model_path, mmproj=other, registry=ServerRegistry())
    with pytest.raises(ProjectorMismatch) as refused:
        mismatched.start()
    error = refused.value
    assert isinstance(error, ServerStartError)
    assert str(error).startswith("llama-server refused the image projector mmproj-other.gguf for "
                                 "SmolLM2-135M-Instruct.Q4_1.gguf: 'mismatch between text model (n_embd = 576) "
                                 "and mmproj (n_embd = 64)'")
    assert "mismatch between text model" in error.log_tail and "published with this model" in error.hint
    assert any(note.startswith("Last log lines:") for note in error.__notes__)
    mismatched.close()


def test_the_plan_counts_what_the_server_allocates_for_the_projector(model_path: str, tmp_path: Path) -> None:
    mmproj = write_projector(tmp_path / "mmproj-224.gguf", image_size=224, patch_size=14, embedding=256,
                             feed_forward=1024, heads=4, hidden=512)
    with LocalModel(model_path, mmproj=mmproj, ctx_size=1024, extra_args=("-lv", "4"),
                    registry=ServerRegistry()) as m:
        assert m.fit.projector is not None
        logs = "\n".join(m.logs())
    weights = float(re.findall(r"load_hparams: model size: +([\d.]+) MiB", logs)[-1])
    compute = float(re.findall(r"reserve_compute_meta: +CPU compute buffer size = +([\d.]+) MiB", logs)[-1])
    assert abs(m.fit.projector.weights / 2**20 - weights) < 0.01  # the tensors, to the byte (as logged)
    assert abs(m.fit.projector.compute / 2**20 - compute) / compute < 0.15  # the formula's worst measured case


def test_the_catalogue_vision_model_loads_from_a_local_hub_cache(files: tuple[Path, Path], tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """``smolvlm-256m`` from a Hugging Face cache holding the tiny model under the real repository's file names."""
    import huggingface_hub.constants as constants  # imported first: its defaults must not see the test's env

    entry = CATALOGUE["smolvlm-256m"]
    hub = tmp_path / "hub"
    snapshot = hf_snapshot(hub, entry.hub, "5e2f" * 10, {entry.filename: files[0], entry.mmproj: files[1]})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_model("smolvlm-256m") == snapshot / entry.filename
    assert pull("smolvlm-256m") == snapshot / entry.filename
    with LocalModel("smolvlm-256m", ctx_size=1024, registry=ServerRegistry()) as m:
        assert m.projector is not None and m.projector.path == (snapshot / entry.mmproj).resolve()
        reply = m.chat(QUESTION, images=[halves()], **GREEDY)
        assert reply.usage is not None and reply.usage.prompt_tokens > IMAGE_TOKENS
    shutil.rmtree(hub)


@pytest.fixture(scope="module")
def shell(vision: LocalModel, files: tuple[Path, Path]) -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "rocm_nb")
    with capture_output():  # the same config as the module's model: attaches to its server
        ip.run_line_magic("rocm_load", f"{files[0]} --mmproj {files[1]} --ctx-size 2048 --alias eyes")
    yield ip
    ip.run_line_magic("rocm_stop", "eyes")


def test_the_magics_load_a_projector_send_images_and_show_it(shell: InteractiveShell, vision: LocalModel) -> None:
    magics = shell.magics_manager.registry["RocmMagics"]
    assert magics.models["eyes"].pid == vision.pid  # --mmproj made the same configuration
    fig, ax = plt.subplots(figsize=(3, 2), dpi=60)
    ax.bar(["a", "b"], [1, 3])
    shell.user_ns["fig"] = fig
    with capture_output():
        shell.run_cell_magic("rocm_generate", "--image fig --max-tokens 1 --temperature 0 --out seen", QUESTION)
        shell.run_cell_magic("rocm_generate", "--max-tokens 1 --temperature 0 --out unseen", QUESTION)
    seen, unseen = shell.user_ns["seen"], shell.user_ns["unseen"]
    assert seen.usage.prompt_tokens - unseen.usage.prompt_tokens == IMAGE_TOKENS
    with pytest.raises(UsageError, match="--image nowhere: no variable 'nowhere' is defined"):
        shell.run_cell_magic("rocm_generate", "--image nowhere", QUESTION)
    with pytest.raises(UsageError, match="--image needs chat mode"):
        shell.run_cell_magic("rocm_generate", "--image fig --raw", QUESTION)
    with capture_output() as shown:
        shell.run_line_magic("rocm_status", "")
    table = shown.outputs[0].data["text/plain"]
    header, row = table.splitlines()[:2]
    assert row[header.index(" images ") + 1:].split()[0] == "yes"  # the columns are aligned
    plt.close(fig)


async def test_the_chat_panel_attaches_images_shows_them_and_keeps_them(vision: LocalModel, tmp_path: Path) -> None:
    panel = vision.panel(temperature=0.0, max_tokens=1)
    fig, ax = plt.subplots(figsize=(3, 2), dpi=60)
    ax.plot([0, 1], [0, 1])
    png = tmp_path / "upload.png"
    fig.savefig(png)
    panel.attach_button.value = ({"name": "upload.png", "type": "image/png", "size": png.stat().st_size,
                                  "content": memoryview(png.read_bytes()), "last_modified": NOW},)  # the Attach button
    assert panel.attach_button.value == () and panel.attachments.value.count("rocm-nb-thumbnail") == 1
    panel.attach(halves())
    assert panel.attachments.value.count("rocm-nb-thumbnail") == 2
    await panel.send(QUESTION)
    sent = panel.history[0]
    assert sent == vision.user_message(QUESTION, images=[png, halves()])  # what was sent is what is kept
    assert panel.attachments.value == "" and panel.last is not None and panel.last.usage is not None
    assert panel.last.usage.prompt_tokens > 2 * IMAGE_TOKENS
    bubble = panel.transcript.children[0].value
    assert bubble.count('class="rocm-nb-thumbnail" src="data:image/png;base64,') == 2
    exported = panel.export()
    assert exported[0]["content"][0]["image_url"]["url"] == sent["content"][0]["image_url"]["url"]
    assert json.loads(json.dumps(exported)) == exported
    plt.close(fig)


async def test_a_panel_on_a_model_without_a_projector_says_so_and_loses_nothing(model_path: str) -> None:
    text_only = LocalModel(model_path, registry=ServerRegistry())
    panel = text_only.panel()
    panel.attach(halves())
    panel.prompt.value = QUESTION  # Enter in the text box
    assert panel.prompt.value == QUESTION and panel.history == []
    error = panel.transcript.children[-1].value
    assert "ImagesNotSupported" in error and "mmproj=" in error
    assert panel.attachments.value.count("rocm-nb-thumbnail") == 1
    panel.attach_button.value = ({"name": "notes.txt", "type": "text/plain", "size": 4, "content": memoryview(b"text"),
                                  "last_modified": NOW},)
    assert "notes.txt: cannot read the 4 bytes given as an image" in panel.transcript.children[-1].value
    assert text_only.state is ModelState.NEW
