"""Image projectors (``mmproj`` GGUFs): what one is, which files are one, and how large an image it uses.

A vision model in llama.cpp is two files: the text model, and a projector
(a vision encoder and the layers that project its output into the text
model's embedding space), loaded with ``llama-server --mmproj FILE``.
:func:`read_projector` reads a projector's GGUF header (the same walk as
:func:`~rocm_nb.modelfiles.catalog.read_info`, no tensor data) and refuses a
file that is not one; :func:`resolve_projector` turns a path, a catalogue
name or ``hf:owner/repo/file.gguf`` into a local file.

**How large an image the projector uses** (:attr:`ProjectorInfo.max_edge`,
:attr:`ProjectorInfo.max_pixels`) decides how far rocm_nb scales an image
down before it is sent (:mod:`rocm_nb.client.images`): anything larger is
thrown away by the server's own preprocessing, after being encoded, sent and
decoded. From the pinned llama.cpp's ``tools/mtmd``:

* a projector whose GGUF gives the longest edge its preprocessor works at
  (``clip.vision.preproc_image_size``: SmolVLM's 2048) uses that;
* one that gives a pixel budget (``clip.vision.image_max_pixels``: the
  dynamic-resolution Qwen-VL family) uses that many pixels;
* the fixed-size types (:data:`FIXED_SIZE_TYPES`: LLaVA 1.5's ``mlp``,
  Gemma 3's…) resize every image to one square of ``clip.vision.image_size``,
  unless the GGUF lists grid pinpoints (LLaVA 1.6's tiling);
* the tiled types that say neither (MiniCPM-V, InternVL, LLaVA 1.6) cut an
  image into tiles of ``image_size``; they get :data:`TILED_EDGE`, which
  keeps every tile a 4:3 photo gets from them.

Example:
    >>> info = read_projector("mmproj-SmolVLM-256M-Instruct-Q8_0.gguf")  # doctest: +SKIP
    >>> info.projector_type, info.image_size, info.max_edge  # doctest: +SKIP
    ('idefics3', 512, 2048)
    >>> sorted(FIXED_SIZE_TYPES)[:3]
    ['adapter', 'cogvlm', 'gemma3']
"""

from __future__ import annotations

import functools
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from rocm_nb.errors import InvalidModel, ModelNotFound
from rocm_nb.modelfiles._gguf import TensorInfo, parse_header
from rocm_nb.modelfiles.catalog import CATALOGUE, check_gguf, hub_file, resolve_model

__all__ = ["FIXED_SIZE_TYPES", "TILED_EDGE", "ProjectorInfo", "read_projector", "resolve_projector"]

FIXED_SIZE_TYPES = frozenset({"mlp", "ldp", "ldpv2", "adapter", "cogvlm", "janus_pro", "gemma3", "gemma3nv", "yasa2"})
"""Projector types whose preprocessing resizes every image to one ``image_size`` square (``tools/mtmd/mtmd.cpp``)."""

_MAX_SIZE = 1 << 16
"""The largest image size, patch size or width a projector's header is believed for (real ones: a few thousand)."""

TILED_EDGE = 2048
"""The longest edge kept for a tiled projector whose GGUF names no limit, and for a server whose projector is
unknown (:func:`~rocm_nb.connect`): SmolVLM's own limit, and more than a 4:3 photo is tiled at by the others."""


@dataclass(frozen=True)
class ProjectorInfo:
    """What a projector's GGUF header says: its type, what it encodes, its image sizes and its tensors.

    Example:
        >>> info = ProjectorInfo(Path("mmproj.gguf"), "mlp", vision=True, audio=False, image_size=336,
        ...                      patch_size=14, file_size=1 << 20)
        >>> info.max_edge, info.max_pixels, info.image_tokens
        (336, None, 576)
    """

    path: Path
    projector_type: str
    vision: bool
    audio: bool
    image_size: int | None
    patch_size: int | None
    file_size: int
    longest_edge: int | None = None
    """``clip.vision.preproc_image_size``: the longest edge the preprocessor works at, when the GGUF says."""
    pixel_budget: int | None = None
    """``clip.vision.image_max_pixels``: the most pixels a dynamic-resolution preprocessor keeps."""
    tiled: bool = False
    """The GGUF lists grid pinpoints (LLaVA 1.6's tiling)."""
    embedding_length: int | None = None
    feed_forward_length: int | None = None
    block_count: int | None = None
    head_count: int | None = None
    tensors: tuple[TensorInfo, ...] = field(default=(), repr=False)

    @property
    def max_edge(self) -> int | None:
        """The longest edge (pixels) worth sending; ``None`` when only :attr:`max_pixels` limits it."""
        if self.longest_edge:
            return self.longest_edge
        if self.pixel_budget:
            return None
        if self.projector_type in FIXED_SIZE_TYPES and self.image_size and not self.tiled:
            return self.image_size
        return max(TILED_EDGE, self.image_size or 0)

    @property
    def max_pixels(self) -> int | None:
        """The most pixels worth sending, for a dynamic-resolution projector; else ``None``."""
        return self.pixel_budget if not self.longest_edge else None

    @property
    def image_tokens(self) -> int | None:
        """Prompt tokens one image costs, for the fixed-size types (``(image_size / patch_size)²``); else ``None``."""
        if self.projector_type not in FIXED_SIZE_TYPES or self.tiled or not self.image_size or not self.patch_size:
            return None
        patches = (self.image_size // self.patch_size) ** 2
        return patches // 4 if self.projector_type in ("ldp", "ldpv2", "adapter") else patches

    @property
    def weights_bytes(self) -> int:
        """Bytes of its tensors (what the server loads)."""
        return sum(t.nbytes for t in self.tensors)


@functools.lru_cache(maxsize=16)
def _read_cached(path: Path, size: int, mtime_ns: int) -> ProjectorInfo:
    try:
        meta, tensors, _ = parse_header(path)
    except InvalidModel:
        raise
    except (struct.error, ValueError, KeyError, IndexError, OverflowError, MemoryError) as exc:
        raise InvalidModel(f"{path} starts like a GGUF file but its header cannot be read ({type(exc).__name__}: "
                           f"{exc}); it is probably truncated or corrupt: fetch it again") from None
    kind = meta.get("clip.projector_type") or meta.get("clip.vision.projector_type")
    if meta.get("general.type") != "mmproj" and not isinstance(kind, str):
        arch = meta.get("general.architecture") or "unknown"
        raise InvalidModel(f"{path.name} is a {arch} model, not an image projector (mmproj): pass the projector "
                           "published with the model (its file name usually starts with mmproj-) as mmproj=")

    def number(key: str) -> int | None:
        value = meta.get(f"clip.vision.{key}")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            return None
        if value > _MAX_SIZE and key != "image_max_pixels":
            raise InvalidModel(f"{path}: clip.vision.{key} is {value:,}, more than any projector uses; the file is "
                               "corrupt or not a projector llama.cpp can load")
        return int(value)

    vision = bool(meta.get("clip.has_vision_encoder"))
    if not vision:
        raise InvalidModel(f"{path.name} is a projector without a vision encoder (audio only): rocm_nb sends images, "
                           "so it needs the projector with the vision encoder")
    return ProjectorInfo(
        path=path, projector_type=str(kind or "unknown"), vision=vision, audio=bool(meta.get("clip.has_audio_encoder")),
        image_size=number("image_size"), patch_size=number("patch_size"), file_size=size,
        longest_edge=number("preproc_image_size"), pixel_budget=number("image_max_pixels"),
        tiled="clip.vision.image_grid_pinpoints" in meta, embedding_length=number("embedding_length"),
        feed_forward_length=number("feed_forward_length"), block_count=number("block_count"),
        head_count=number("attention.head_count"), tensors=tensors,
    )


def read_projector(path: str | os.PathLike[str]) -> ProjectorInfo:
    """Read a projector's GGUF header; refuse a file that is no vision projector before any server starts.

    Raises :class:`~rocm_nb.errors.ModelNotFound` for a missing file and
    :class:`~rocm_nb.errors.InvalidModel` for one that is not a GGUF, is
    truncated, or is a text model or an audio-only projector. Cached per
    path, size and modification time.

    Example:
        >>> read_projector("/etc/hostname")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rocm_nb.errors.InvalidModel: /etc/hostname is not a GGUF file ...
    """
    file = check_gguf(path)
    stat = file.stat()
    return _read_cached(file.resolve(), stat.st_size, stat.st_mtime_ns)


def resolve_projector(spec: str | os.PathLike[str]) -> Path:
    """A projector as a local file: a path, ``hf:owner/repo/file.gguf``, or a catalogue name (its projector).

    Example:
        >>> resolve_projector("smollm2-135m")
        Traceback (most recent call last):
        ...
        rocm_nb.errors.ModelNotFound: smollm2-135m has no image projector in the catalogue; give the mmproj file's ...
    """
    text = os.fspath(spec)
    entry = CATALOGUE.get(text)
    if entry is not None and not Path(text).exists():
        if not entry.mmproj:
            raise ModelNotFound(f"{text} has no image projector in the catalogue; give the mmproj file's path or "
                                "hf:owner/repo/mmproj-….gguf")
        return hub_file(entry.hub, entry.mmproj)
    return resolve_model(text)
