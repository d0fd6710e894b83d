"""Images into chat messages: whatever a notebook holds, as the content part a vision model's server takes.

``model.chat("What trend does this show?", images=[fig])`` sends the figure
with the question. :func:`encode` accepts a file path, ``bytes``, a PIL
image, a NumPy array (H×W×3 or H×W, ``uint8`` or float in [0, 1]; H×W×4 is
taken as RGBA), a matplotlib ``Figure`` or ``Axes`` (rendered to PNG as the
notebook's inline backend shows it: ``savefig(..., bbox_inches="tight")``),
an IPython ``Image``, or anything with ``_repr_png_`` or ``_repr_jpeg_``.
Each becomes an OpenAI ``image_url`` content part holding a ``data:`` URL,
which llama-server, vLLM, SGLang and Ollama all take.

Decisions, in one place:

* **Scaled to what the projector uses** (:class:`ImageLimit`, read from the
  projector's GGUF by :attr:`~rocm_nb.modelfiles.projector.ProjectorInfo.max_edge`;
  for a server whose projector is unknown, 2048 pixels on the longest
  edge), with Lanczos resampling, keeping the aspect ratio and never
  enlarging: the server would shrink a larger image anyway, after it was
  encoded, sent and decoded. A 4000×3000 photo is not sent as 20 MB of
  base64 (``benchmarks/README.md`` has the bytes).
* **Re-encoded from pixels, so the same pixels make the same request**,
  whatever they came in: decoded (EXIF orientation applied), made RGB
  (transparent parts over white, as a notebook shows them; the server would
  drop the alpha channel and show them black), scaled, and written as PNG,
  lossless, so a chart's lines and text reach the model as drawn, when it
  has at most :data:`PNG_COLOURS` colours (charts, diagrams, screenshots:
  a matplotlib line chart has a few hundred), and as JPEG at quality 90
  otherwise (photos, heatmaps). Measured on a 2048×1536 photo-like image: a
  PNG of 5.9 MB that took over a second to write, against a JPEG of 0.6 MB
  in 25 ms; counting the colours takes 2 ms.
* **A ``data:`` URL already in a message is kept as it is** when it is PNG or
  JPEG within the limit (a chat's history is not re-encoded every turn), and
  re-encoded otherwise. Other URLs pass unchanged, for the server to fetch or
  refuse.
* Images go before the text in the user's message, the order vision models
  are trained on (LLaVA's ``<image>\\nquestion``).
* Pillow is the ``vision`` extra (``pip install "rocm_nb[vision]"``);
  matplotlib and IPython objects are recognised by what they have, not by
  importing those libraries.

Example:
    >>> import numpy as np
    >>> part = image_part(np.zeros((3000, 4000, 3), np.uint8), ImageLimit(max_edge=32))
    >>> part["type"], part["image_url"]["url"][:22]
    ('image_url', 'data:image/png;base64,')
    >>> encode(np.zeros((3000, 4000, 3), np.uint8), ImageLimit(max_edge=32)).size
    (32, 24)
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rocm_nb._extras import needs_extra
from rocm_nb.client.completion import Message
from rocm_nb.modelfiles.projector import TILED_EDGE

if TYPE_CHECKING:
    from PIL import Image as PILImage

__all__ = [
    "ACCEPTED",
    "PNG_COLOURS",
    "EncodedImage",
    "ImageInput",
    "ImageLimit",
    "encode",
    "has_images",
    "image_part",
    "is_image_url",
    "thumbnail",
    "user_message",
    "with_images",
]

ImageInput = Any
"""What ``images=`` takes: see :data:`ACCEPTED` (typed ``Any``: PIL, NumPy, matplotlib and IPython are optional)."""

ACCEPTED = ("a file path, bytes, a PIL image, a NumPy array (H×W×3 or H×W, uint8 or float in [0, 1]), "
            "a matplotlib Figure or an IPython Image")
"""The accepted inputs, as error messages name them."""

PNG_COLOURS = 4096
"""The most colours an image sent as PNG has; one with more (a photo) is sent as JPEG, quality 90."""

_DATA_URL = re.compile(r"data:image/(png|jpeg);base64,[A-Za-z0-9+/]*={0,2}")


@dataclass(frozen=True)
class ImageLimit:
    """How large an image is worth sending: the longest edge and the pixel count (``None``: no limit).

    Example:
        >>> ImageLimit(max_edge=512).size(4000, 3000)
        (512, 384)
        >>> ImageLimit(max_edge=None, max_pixels=1_000_000).size(4000, 3000)
        (1155, 866)
        >>> ImageLimit(max_edge=512).size(200, 100)
        (200, 100)
    """

    max_edge: int | None = TILED_EDGE
    max_pixels: int | None = None

    def size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` scaled down to fit, keeping the aspect ratio; never enlarged."""
        scale = 1.0
        if self.max_edge:
            scale = min(scale, self.max_edge / max(width, height))
        if self.max_pixels:
            scale = min(scale, math.sqrt(self.max_pixels / (width * height)))
        if scale >= 1.0:
            return width, height
        return max(1, round(width * scale)), max(1, round(height * scale))


@dataclass(frozen=True)
class EncodedImage:
    """An image as it is sent: its ``data:`` URL, the size sent and the size it came in.

    Example:
        >>> import numpy as np
        >>> encoded = encode(np.full((10, 20), 0.5))
        >>> encoded.size, encoded.original_size, encoded.format
        ((20, 10), (20, 10), 'png')
    """

    url: str
    size: tuple[int, int]
    original_size: tuple[int, int]
    format: str

    def part(self) -> dict[str, Any]:
        """The OpenAI content part: ``{"type": "image_url", "image_url": {"url": ...}}``."""
        return {"type": "image_url", "image_url": {"url": self.url}}


def _pil() -> Any:
    with needs_extra("vision"):
        from PIL import Image, ImageOps
    return Image, ImageOps


def _decode(data: bytes, what: str) -> PILImage.Image:
    """``data`` as a decoded PIL image; a ``ValueError`` naming ``what`` when Pillow cannot read it."""
    image_module, image_ops = _pil()
    try:
        image = image_module.open(io.BytesIO(data))
        image.load()
        return image_ops.exif_transpose(image) or image  # type: ignore[no-any-return]
    except image_module.UnidentifiedImageError:
        reason = "not a format Pillow reads"
    except (OSError, ValueError, SyntaxError, image_module.DecompressionBombError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
    raise ValueError(f"cannot read {what} as an image ({reason}); images= takes PNG, JPEG, GIF, BMP, TIFF or WebP "
                     "files, among others")


def _from_array(array: Any) -> PILImage.Image:
    """A NumPy array (H×W, H×W×3 or H×W×4; uint8, or float in [0, 1]) as a PIL image."""
    import numpy as np

    image_module, _ = _pil()
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or 0 in array.shape:
        hint = "; channels go last: np.moveaxis(a, 0, -1)" if array.ndim == 3 and array.shape[0] in (3, 4) else ""
        raise ValueError(f"an array of shape {array.shape} is not an image: images= takes H×W (grey), H×W×3 (RGB) "
                         f"or H×W×4 (RGBA) arrays{hint}")
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array).all()
        low, high = (float(array.min()), float(array.max())) if finite else (math.nan, math.nan)
        if not finite or low < 0.0 or high > 1.0:
            raise ValueError(f"float pixels must lie in [0, 1], but these range from {low:g} to {high:g}; divide "
                             "by 255 if they are 0–255 values, or pass a.astype(np.uint8)")
        array = np.round(array * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise TypeError(f"an array of {array.dtype} pixels: images= takes uint8 (0–255) or float (0–1) arrays; "
                        "convert it with a.astype(np.uint8) or a / 255")
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[array.shape[2] if array.ndim == 3 else 2]
    return image_module.fromarray(np.ascontiguousarray(array), mode)  # type: ignore[no-any-return]


def _load(image: ImageInput) -> PILImage.Image:
    """Any accepted input as a decoded PIL image (what :data:`ACCEPTED` lists; errors name the input)."""
    if isinstance(image, str) and image.startswith("data:"):
        return _decode(_data_url_bytes(image), "the data: URL")
    if isinstance(image, str) and re.match(r"[a-z]+://", image):
        raise ValueError(f"{image[:80]!r} is a URL; rocm_nb does not fetch images: download it and pass the file")
    if isinstance(image, str | os.PathLike):
        path = Path(image).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no image file {path}" + (": it is a directory" if path.is_dir() else ""))
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ValueError(f"the image file {path} cannot be read ({exc.strerror or exc})") from None
        return _decode(data, f"the file {path}")
    if isinstance(image, bytes | bytearray | memoryview):
        return _decode(bytes(image), f"the {len(image)} bytes given")
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(image, pil.Image):
        loaded: PILImage.Image = image
        return loaded
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(image, numpy.ndarray):
        return _from_array(image)
    figure: Any = image if hasattr(image, "canvas") else getattr(image, "figure", None)  # a Figure, or its Axes
    if callable(getattr(figure, "savefig", None)) and hasattr(figure, "canvas"):
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", bbox_inches="tight")  # as the notebook's inline backend shows it
        return _decode(buffer.getvalue(), f"the {type(image).__name__} rendered to PNG")
    for method in ("_repr_png_", "_repr_jpeg_"):  # IPython's Image, and anything else that shows as one
        shown = getattr(image, method, lambda: None)()
        if isinstance(shown, bytes | str) and shown:
            raw = shown if isinstance(shown, bytes) else base64.b64decode(shown)
            return _decode(raw, f"the {type(image).__name__}'s {method[7:-1].upper()} data")
    raise TypeError(f"{type(image).__name__} is not an image; images= takes {ACCEPTED}")


def _data_url_bytes(url: str) -> bytes:
    head, _, payload = url.partition(",")
    if not head.endswith(";base64"):
        raise ValueError(f"the data: URL {head[:40]!r}… is not base64: images= takes base64 data: URLs")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"the data: URL's base64 is broken ({exc})") from None


def _rgb(image: PILImage.Image) -> PILImage.Image:
    """RGB, with transparent parts over white."""
    image_module, _ = _pil()
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = image_module.new("RGBA", rgba.size, (255, 255, 255, 255))
        return image_module.alpha_composite(white, rgba).convert("RGB")  # type: ignore[no-any-return]
    return image.convert("RGB")


def _write(image: PILImage.Image, format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def encode(image: ImageInput, limit: ImageLimit | None = None) -> EncodedImage:
    """``image`` as it is sent: decoded, RGB, scaled to ``limit``, as PNG (or JPEG: see the module docstring).

    A ``TypeError`` names the accepted inputs; an unreadable file or data a
    ``ValueError`` naming it; a missing file a ``FileNotFoundError``.

    Example:
        >>> encode(b"not an image")
        Traceback (most recent call last):
        ...
        ValueError: cannot read the 12 bytes given as an image (not a format Pillow reads); images= takes PNG, ...
        >>> encode({"not": "an image"})
        Traceback (most recent call last):
        ...
        TypeError: dict is not an image; images= takes a file path, bytes, a PIL image, a NumPy array ...
    """
    image_module, _ = _pil()
    limit = limit or ImageLimit()
    picture = _rgb(_load(image))
    original = picture.size
    size = limit.size(*original)
    if size != original:
        picture = picture.resize(size, image_module.Resampling.LANCZOS, reducing_gap=3.0)
    few_colours = picture.getcolors(maxcolors=PNG_COLOURS) is not None
    data, kind = (_write(picture, "PNG"), "png") if few_colours else (_write(picture, "JPEG", quality=90), "jpeg")
    return EncodedImage(f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}", size, original, kind)


def image_part(image: ImageInput, limit: ImageLimit | None = None) -> dict[str, Any]:
    """The content part for ``image`` (:func:`encode`'s, as ``{"type": "image_url", ...}``).

    Example:
        >>> import numpy as np
        >>> image_part(np.zeros((2, 2), np.uint8))["image_url"]["url"].startswith("data:image/png;base64,")
        True
    """
    return encode(image, limit).part()


def is_image_url(url: object) -> bool:
    """Whether ``url`` is a base64 PNG or JPEG ``data:`` URL, nothing else (what a display may put in ``src``).

    Example:
        >>> is_image_url("data:image/png;base64,iVBORw0KGgo="), is_image_url('data:image/png;base64,x" onerror="')
        (True, False)
    """
    return isinstance(url, str) and _DATA_URL.fullmatch(url) is not None


def _kept(url: str, limit: ImageLimit) -> bool:
    """Whether a data: URL can be sent as it is: PNG or JPEG, within ``limit`` (read from its header only)."""
    if not is_image_url(url):
        return False
    image_module, _ = _pil()
    try:
        with image_module.open(io.BytesIO(_data_url_bytes(url))) as image:
            return image.format in ("PNG", "JPEG") and limit.size(*image.size) == image.size
    except (OSError, ValueError, SyntaxError):
        return False


def _part(part: Any, limit: ImageLimit) -> Any:
    """One content part with its image encoded: ``{"type": "image", "image": X}`` or an ``image_url`` data: URL."""
    if not isinstance(part, dict):
        return part
    if part.get("type") == "image":
        if "image" not in part:
            raise ValueError('an {"type": "image"} part needs its image: {"type": "image", "image": fig}')
        return image_part(part["image"], limit)
    where = part.get("image_url") if part.get("type") == "image_url" else None
    url = where.get("url") if isinstance(where, dict) else None
    if isinstance(url, str) and url.startswith("data:") and not _kept(url, limit):
        return image_part(url, limit)
    return part


def has_images(messages: Sequence[Message]) -> bool:
    """Whether any message holds an image part (``image_url``, or rocm_nb's ``{"type": "image", ...}``).

    Example:
        >>> has_images([{"role": "user", "content": "Hi"}])
        False
        >>> has_images([{"role": "user", "content": [{"type": "image", "image": "fig.png"}]}])
        True
    """
    return any(isinstance(part, dict) and part.get("type") in ("image", "image_url")
               for message in messages if isinstance(message.get("content"), list) for part in message["content"])


def with_images(messages: str | Sequence[Message], images: Sequence[ImageInput] = (),
                limit: ImageLimit | None = None) -> list[Message]:
    """``messages`` (or one user message's text) with every image encoded, and ``images`` added to the last one.

    ``images`` join the last message, which must be the user's, before its
    text. The messages given are not changed; text-only messages come back
    as they are.

    Example:
        >>> import numpy as np
        >>> sent = with_images("What is this?", [np.zeros((4, 4), np.uint8)])
        >>> [part["type"] for part in sent[0]["content"]]
        ['image_url', 'text']
        >>> with_images([{"role": "assistant", "content": "Hi"}], [np.zeros((4, 4), np.uint8)])
        Traceback (most recent call last):
        ...
        ValueError: images= join the last message, which must be the user's; the last one here is the assistant's
    """
    listed: list[Message] = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)
    if not images and not has_images(listed):
        return listed
    limit = limit or ImageLimit()
    if isinstance(images, str | bytes | os.PathLike) or not isinstance(images, Sequence):
        raise TypeError(f"images= takes a list of images (each {ACCEPTED}), not one {type(images).__name__}: "
                        "write images=[image]")
    sent: list[Message] = [{**m, "content": [_part(p, limit) for p in m["content"]]}
                           if isinstance(m.get("content"), list) else dict(m) for m in listed]
    if images:
        if not sent or sent[-1].get("role") != "user":
            last = sent[-1].get("role") if sent else "none"
            raise ValueError(f"images= join the last message, which must be the user's; the last one here is the "
                             f"{last}'s")
        content = sent[-1].get("content")
        text = content if isinstance(content, list) else [{"type": "text", "text": content}] if content else []
        sent[-1] = {**sent[-1], "content": [*(image_part(image, limit) for image in images), *text]}
    return sent


def user_message(text: str, images: Sequence[ImageInput] = (), limit: ImageLimit | None = None) -> Message:
    """The user's message of ``text`` and ``images``, as it is sent (and as a history should keep it).

    Example:
        >>> import numpy as np
        >>> message = user_message("Describe it.", [np.zeros((8, 8, 3))])
        >>> message["role"], [p["type"] for p in message["content"]]
        ('user', ['image_url', 'text'])
    """
    return with_images(text, images, limit)[0]


def thumbnail(image: ImageInput, edge: int = 160) -> str:
    """A small PNG ``data:`` URL of ``image`` for a display (at most ``edge`` pixels on its longest side).

    Example:
        >>> import numpy as np
        >>> is_image_url(thumbnail(np.zeros((600, 800, 3), np.uint8)))
        True
    """
    picture = _rgb(_load(image))
    image_module, _ = _pil()
    picture = picture.resize(ImageLimit(max_edge=edge).size(*picture.size), image_module.Resampling.LANCZOS)
    return f"data:image/png;base64,{base64.b64encode(_write(picture, 'PNG')).decode('ascii')}"
