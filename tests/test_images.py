"""Images into messages, without a server: every input type, the scaling, the errors, projectors and the plan."""

from __future__ import annotations

import base64
import io
import json
import re
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import gguf
import matplotlib
import numpy as np
import pytest
from IPython.display import Image as IPythonImage
from PIL import Image

from rocm_nb._options import LoadOptions
from rocm_nb.client.images import (
    PNG_COLOURS,
    ImageLimit,
    encode,
    has_images,
    is_image_url,
    thumbnail,
    user_message,
    with_images,
)
from rocm_nb.client.request import check_request
from rocm_nb.errors import InvalidModel
from rocm_nb.hardware import Hardware
from rocm_nb.modelfiles.catalog import CATALOGUE, default_projector, read_info
from rocm_nb.modelfiles.fit import plan_load
from rocm_nb.modelfiles.projector import TILED_EDGE, ProjectorInfo, read_projector
from rocm_nb.notebook.chat import message_html
from tests.support.gguf_files import write_gguf
from tests.support.hostile import HOSTILE, inert_html
from tests.support.vision import IMAGE_SIZE, IMAGE_TOKENS, write_projector

matplotlib.use("Agg")
from matplotlib import pyplot as plt

pytestmark = pytest.mark.unit

TINY = ImageLimit(max_edge=IMAGE_SIZE)


def figure() -> Any:
    fig, ax = plt.subplots(figsize=(4, 3), dpi=50)
    ax.plot([1, 2, 3, 4], [1, 4, 2, 5], marker="o")
    ax.set_title("a trend")
    return fig


def decoded(url: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(url.partition(",")[2])))


def test_every_input_type_gives_the_same_request_for_the_same_pixels(tmp_path: Path) -> None:
    fig = figure()
    png = tmp_path / "figure.png"
    fig.savefig(png, format="png", bbox_inches="tight")  # what the notebook shows
    pixels = np.asarray(Image.open(png).convert("RGB"))
    inputs = {
        "matplotlib Figure": fig,
        "matplotlib Axes": fig.axes[0],
        "path (str)": str(png),
        "path (Path)": png,
        "bytes": png.read_bytes(),
        "PIL image": Image.open(png),
        "uint8 array": pixels,
        "float array": pixels / 255.0,
        "IPython Image (file)": IPythonImage(filename=str(png)),
        "IPython Image (data)": IPythonImage(data=png.read_bytes()),
        "data: URL": "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode(),
    }
    for limit in (TINY, ImageLimit()):
        payloads = {name: check_request("chat", with_images("What trend does this show?", [image], limit),
                                        {"max_tokens": 8}).body("llama.cpp") for name, image in inputs.items()}
        first = json.dumps(payloads["matplotlib Figure"])
        assert {name: json.dumps(p) == first for name, p in payloads.items()} == dict.fromkeys(inputs, True)
    [image, text] = payloads["uint8 array"]["messages"][0]["content"]
    assert text == {"type": "text", "text": "What trend does this show?"}
    assert np.array_equal(np.asarray(decoded(image["image_url"]["url"]).convert("RGB")), pixels)  # lossless, unscaled
    grey = pixels[:, :, 0]
    assert encode(grey).url == encode(np.stack([grey] * 3, axis=-1)).url  # H×W is the same as its RGB
    plt.close(fig)


def test_images_are_scaled_to_the_projector_keeping_their_shape() -> None:
    photo = np.random.default_rng(1).integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    sent = encode(photo, TINY)
    assert (sent.size, sent.original_size) == ((32, 24), (4000, 3000))
    assert decoded(sent.url).size == (32, 24)
    assert len(sent.url) < 5_000  # where 4000×3000 would be tens of megabytes of base64
    assert encode(np.zeros((10, 20, 3), np.uint8), TINY).size == (20, 10)  # never enlarged
    assert ImageLimit(max_edge=None, max_pixels=10_000).size(400, 100) == (200, 50)
    assert ImageLimit().max_edge == TILED_EDGE


def test_a_photo_is_sent_as_jpeg_and_a_chart_as_png() -> None:
    photo = np.random.default_rng(2).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    sent = encode(photo)
    assert sent.format == "jpeg" and sent.url.startswith("data:image/jpeg;base64,")
    lossless = io.BytesIO()
    Image.fromarray(photo).save(lossless, "PNG")
    assert len(base64.b64decode(sent.url.partition(",")[2])) < len(lossless.getvalue())
    chart = encode(figure())
    assert chart.format == "png"  # lines and text stay lossless
    index = np.arange(PNG_COLOURS + 64).reshape(-1, 64)  # one colour per pixel: PNG_COLOURS + 64 of them
    colours = np.stack([index % 256, index // 256, np.zeros_like(index)], axis=-1).astype(np.uint8)
    assert encode(colours[:-1]).format == "png" and encode(colours).format == "jpeg"  # PNG_COLOURS: the limit


def test_transparency_is_shown_over_white() -> None:
    clear = np.zeros((8, 8, 4), np.uint8)  # fully transparent black
    assert np.asarray(decoded(encode(clear).url).convert("RGB")).min() == 255


def test_what_is_not_an_image_is_refused_naming_it(tmp_path: Path) -> None:
    for wrong in ({"not": "an image"}, 42, [1, 2, 3], object()):
        with pytest.raises(TypeError, match=r"is not an image; images= takes a file path, bytes, a PIL image, a NumPy "
                                            r"array .*, a matplotlib Figure or an IPython Image"):
            encode(wrong)
    with pytest.raises(TypeError, match=r"int64 pixels.*astype"):
        encode(np.zeros((4, 4, 3), np.int64))
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=re.escape(f"cannot read the file {text} as an image")):
        encode(text)
    svg = tmp_path / "plot.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    with pytest.raises(ValueError, match=re.escape(f"cannot read the file {svg} as an image")):
        encode(str(svg))
    truncated = tmp_path / "cut.png"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "PNG")
    truncated.write_bytes(buffer.getvalue()[:60])
    with pytest.raises(ValueError, match=re.escape(f"cannot read the file {truncated} as an image")):
        encode(truncated)
    with pytest.raises(FileNotFoundError, match=re.escape(f"no image file {tmp_path / 'missing.png'}")):
        encode(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="cannot read the 12 bytes given as an image"):
        encode(b"not an image")
    with pytest.raises(ValueError, match=r"float pixels must lie in \[0, 1\], but these range from 0 to 255"):
        encode(np.linspace(0.0, 255.0, 16).reshape(4, 4))
    with pytest.raises(ValueError, match=r"shape \(3, 8, 8\) is not an image.*np.moveaxis"):
        encode(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="does not fetch images"):
        encode("https://example.com/cat.png")
    with pytest.raises(TypeError, match="not one str: write images=\\[image\\]"):
        with_images("Hi", "figure.png")  # type: ignore[arg-type]


def test_images_join_the_users_message_and_image_parts_are_encoded() -> None:
    image = np.zeros((40, 40, 3), np.uint8)
    history = [{"role": "system", "content": "Be brief."},
               {"role": "user", "content": [{"type": "text", "text": "Compare"}, {"type": "image", "image": image}]}]
    sent = with_images(history, [image], TINY)
    assert [p["type"] for p in sent[1]["content"]] == ["image_url", "text", "image_url"]
    assert history[1]["content"][1] == {"type": "image", "image": image}  # the caller's messages are untouched
    assert has_images(sent) and not has_images([{"role": "user", "content": "Hi"}])
    text_only = [{"role": "user", "content": "Hi"}]
    assert with_images(text_only, (), TINY) == text_only
    with pytest.raises(ValueError, match="the last one here is the assistant's"):
        with_images([{"role": "assistant", "content": "Hi"}], [image])
    with pytest.raises(TypeError, match=r'an \{"type": "image"\} part is encoded by chat\(\)'):
        check_request("chat", history, {})


def test_a_data_url_within_the_limit_is_kept_and_a_larger_one_scaled() -> None:
    small = user_message("Hi", [np.zeros((20, 20, 3), np.uint8)], TINY)
    assert with_images([small], (), TINY) == [small]  # a history is not re-encoded each turn
    big = user_message("Hi", [np.zeros((200, 100, 3), np.uint8)], ImageLimit())
    [scaled] = with_images([big], (), TINY)
    assert decoded(scaled["content"][0]["image_url"]["url"]).size == (16, 32)


def test_only_our_own_data_urls_become_thumbnails() -> None:
    good = user_message("A **plot**", [np.zeros((300, 300, 3), np.uint8)])
    shown = message_html(good)
    assert shown.count('<img class="rocm-nb-thumbnail" src="data:image/png;base64,') == 1
    assert "<strong>plot</strong>" in shown
    assert decoded(thumbnail(np.zeros((300, 600, 3), np.uint8))).size == (160, 80)
    hostile = {"role": "user", "content": [
        {"type": "text", "text": HOSTILE},
        {"type": "image_url", "image_url": {"url": 'data:image/png;base64,AAAA" onerror="window.__rocm_nb_pwned=1'}},
        {"type": "image_url", "image_url": {"url": "https://evil.example/track.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/svg+xml;base64,PHN2Zz4="}},
    ]}
    assert "window.__rocm_nb_pwned_1=1" in inert_html(message_html(hostile))  # the text, as text; no image at all
    assert not is_image_url("data:image/svg+xml;base64,PHN2Zz4=")


def test_pillow_names_its_extra_when_missing() -> None:
    with mock.patch.dict(sys.modules, {"PIL": None, "PIL.Image": None}), \
            pytest.raises(ModuleNotFoundError, match=r'images in chats need it: pip install "rocm_nb\[vision\]"'):
        encode(b"\x89PNG")


def test_a_projector_says_its_type_size_and_image_cost(tmp_path: Path) -> None:
    info = read_projector(write_projector(tmp_path / "mmproj.gguf"))
    assert (info.projector_type, info.vision, info.audio) == ("mlp", True, False)
    assert (info.image_size, info.max_edge, info.max_pixels, info.image_tokens) == (IMAGE_SIZE, IMAGE_SIZE, None,
                                                                                    IMAGE_TOKENS)
    assert info.weights_bytes == sum(t.nbytes for t in info.tensors) > 0
    smolvlm = ProjectorInfo(Path("m.gguf"), "idefics3", vision=True, audio=False, image_size=512, patch_size=16,
                            file_size=0, longest_edge=2048)
    qwen = ProjectorInfo(Path("m.gguf"), "qwen2vl_merger", vision=True, audio=False, image_size=560, patch_size=14,
                         file_size=0, pixel_budget=3_211_264)
    minicpm = ProjectorInfo(Path("m.gguf"), "resampler", vision=True, audio=False, image_size=448, patch_size=14,
                            file_size=0)
    assert [(p.max_edge, p.max_pixels) for p in (smolvlm, qwen, minicpm)] == [(2048, None), (None, 3_211_264),
                                                                              (TILED_EDGE, None)]
    [text_model] = write_gguf(tmp_path / "text.gguf", "Text")
    with pytest.raises(InvalidModel, match=r"text\.gguf is a llama model, not an image projector"):
        read_projector(text_model)
    hostile = gguf.GGUFWriter(str(tmp_path / "hostile.gguf"), "clip")
    hostile.add_type(gguf.GGUFType.MMPROJ)
    hostile.add_clip_has_vision_encoder(True)
    hostile.add_vision_image_size(1 << 30)
    for write in (hostile.write_header_to_file, hostile.write_kv_data_to_file, hostile.write_tensors_to_file):
        write()
    hostile.close()
    with pytest.raises(InvalidModel, match=r"clip\.vision\.image_size is 1,073,741,824, more than any projector"):
        read_projector(tmp_path / "hostile.gguf")
    assert read_info(write_projector(tmp_path / "p.gguf")).architecture == "clip"


def test_the_plan_counts_the_projector_and_says_so(tmp_path: Path) -> None:
    [text_model] = write_gguf(tmp_path / "text.gguf", "Text")
    info = read_info(text_model)
    projector = read_projector(write_projector(tmp_path / "mmproj.gguf", image_size=224, patch_size=14,
                                               embedding=256, feed_forward=1024, heads=4, hidden=512))
    cpu = Hardware("cpu", (), None, ())
    without = plan_load(info, cpu, "cpu", ctx_size=512, free_ram_bytes=8 << 30)
    seen = plan_load(info, cpu, "cpu", ctx_size=512, free_ram_bytes=8 << 30, projector=projector)
    assert seen.projector is not None and without.projector is None
    assert seen.projector.weights == projector.weights_bytes and seen.projector.ram == seen.projector.total
    assert seen.projector.compute == 256 * 4 * (3 * 14 * 14 + 1024 + 2 * 256)  # the measured formula
    assert seen.note.endswith("; set aside first for the image projector: about 11 MiB: weights 8 MiB, "
                              "compute 2 MiB (in RAM)")


def test_the_catalogue_vision_model_carries_its_projector() -> None:
    entry = CATALOGUE["smolvlm-256m"]
    assert (entry.hub, entry.filename, entry.mmproj) == ("ggml-org/SmolVLM-256M-Instruct-GGUF",
                                                         "SmolVLM-256M-Instruct-Q8_0.gguf",
                                                         "mmproj-SmolVLM-256M-Instruct-Q8_0.gguf")
    assert default_projector("smolvlm-256m") == "smolvlm-256m"
    assert default_projector("smollm2-135m") is None


def test_a_raw_projector_flag_points_to_mmproj() -> None:
    with pytest.raises(ValueError, match=r"extra_args may not contain --mmproj: .*use mmproj= instead \(the plan "
                                         r"counts the projector"):
        LoadOptions.of(extra_args=["--mmproj", "mmproj-model.gguf"])
    with pytest.raises(ValueError, match=r"--no-mmproj-offload: .*use gpu_layers= instead"):
        LoadOptions.of(extra_args=["--no-mmproj-offload"])
    assert LoadOptions.of(mmproj=Path("mmproj.gguf")).mmproj == "mmproj.gguf"
