"""The model library: real GGUF files in temporary caches and directories.

The library reads headers only, so the default model's place in the rocm_nb
cache holds a GGUF with its header and no tensor data
(:func:`tests.support.gguf_files.write_default_model_header`): these tests
run in the unit tier, with no model downloaded.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rocm_nb import models
from rocm_nb._units import human_bytes
from rocm_nb.hardware import GPU, Hardware
from rocm_nb.modelfiles.catalog import CATALOGUE, DEFAULT_MODEL, read_info, resolve_model
from rocm_nb.modelfiles.fit import GPU_MARGIN, estimate
from rocm_nb.modelfiles.library import LibraryEntry, ModelLibrary, hf_hub_cache, model_names
from tests.support.gguf_files import (
    DEFAULT_PARAMETERS,
    HUGE_COUNT,
    HUGE_SHAPE,
    hf_snapshot,
    write_default_model_header,
    write_gguf,
    write_huge_gguf,
)

pytestmark = pytest.mark.unit

TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
CPU_ONLY = Hardware("cpu", (), None, ())
GiB = 2**30


@dataclass
class Machine:
    env: dict[str, str]
    hub: Path
    mine: Path
    more: Path
    default: Path


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    """A machine's worth of model files: the rocm_nb cache, a Hugging Face cache, two model directories."""
    cache, hub, mine, more, src = (tmp_path / n for n in ("cache", "hub", "mine", "more", "src"))
    default = write_default_model_header(cache / "models" / CATALOGUE[DEFAULT_MODEL].filename)

    tiny = write_gguf(src / "tiny.Q8_0.gguf", "Tiny", template=TEMPLATE)[0]
    shards = write_gguf(src / "split" / "big.gguf", "Big", arch="qwen2", ctx=32768, tensors=5, split_max_tensors=2)
    files = {"tiny.Q8_0.gguf": tiny, "README.md": tiny.with_name("README.md")}
    files["README.md"].write_text("# a model card, not a model\n")
    files |= {f"F16/{p.name}": p for p in shards}
    snapshot = hf_snapshot(hub, "acme/tiny-GGUF", "a" * 40, files)
    hf_snapshot(hub, "acme/tiny-GGUF", "b" * 40, {"tiny.Q8_0.gguf": tiny}, refs=())  # an older revision, same blob

    write_gguf(mine / "nested" / "deeper" / "mamba.gguf", "Deep Mamba", arch="mamba", ctx=1024)
    for shard in write_gguf(mine / "gap.gguf", "Gap", tensors=3, split_max_tensors=1):
        if "-00002-" in shard.name:
            shard.unlink()
    (mine / "notes.gguf").write_text("# not a model\n")
    (mine / "<b>odd&name.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 8 + b"\x00" * 8)  # 2**64 tensors
    (mine / "again.gguf").symlink_to(snapshot / "tiny.Q8_0.gguf")  # the HF file once more, through a link
    (mine / "loop.gguf").symlink_to(mine / "loop.gguf")
    write_gguf(more / "other.gguf", "Other", ctx=4096, template=TEMPLATE)

    env = {"ROCM_NB_CACHE": str(cache), "HF_HUB_CACHE": str(hub),
           "ROCM_NB_MODEL_DIR": os.pathsep.join([str(mine), str(more), str(tmp_path / "absent")])}
    return Machine(env, hub, mine, more, default)


def by_name(library: ModelLibrary) -> dict[str, LibraryEntry]:
    return {entry.name: entry for entry in library}


def test_finds_every_model_once_in_the_three_places(machine: Machine) -> None:
    library = models(environ=machine.env)
    mine = str(machine.mine)
    assert [e.name for e in library] == [
        DEFAULT_MODEL,
        "hf:acme/tiny-GGUF/F16/big-00001-of-00003.gguf",
        "hf:acme/tiny-GGUF/tiny.Q8_0.gguf",
        f"{mine}/<b>odd&name.gguf",
        f"{mine}/gap-00001-of-00003.gguf",
        f"{mine}/loop.gguf",
        f"{mine}/nested/deeper/mamba.gguf",
        f"{mine}/notes.gguf",
        f"{machine.more}/other.gguf",
    ]
    entries = by_name(library)
    default = entries[DEFAULT_MODEL]
    assert default.source == "rocm_nb" and default.path == machine.default
    assert default.info is not None and default.info.quantization == "Q4_1" and default.info.chat_template
    assert default.info.parameters == DEFAULT_PARAMETERS and default.size == machine.default.stat().st_size

    tiny = entries["hf:acme/tiny-GGUF/tiny.Q8_0.gguf"]
    assert tiny.source == "huggingface" and tiny.path.is_symlink() and tiny.shards == 1
    assert tiny.info is not None and (tiny.info.name, tiny.info.chat_template) == ("Tiny", TEMPLATE)
    # the blob is reached through two revisions and a user's symlink: one entry
    assert [e.name for e in library if os.path.realpath(e.path) == os.path.realpath(tiny.path)] == [tiny.name]

    deep = entries[f"{mine}/nested/deeper/mamba.gguf"]
    assert deep.source == "directory"
    assert deep.info is not None and (deep.info.architecture, deep.info.context_length) == ("mamba", 1024)
    assert any(note.startswith(f"{machine.mine.parent / 'absent'} is not a directory") for note in library.notes)


def test_shards_are_one_entry_with_summed_size_and_parameters(machine: Machine) -> None:
    big = by_name(models(environ=machine.env))["hf:acme/tiny-GGUF/F16/big-00001-of-00003.gguf"]
    files = sorted(big.path.parent.glob("big-*.gguf"))
    assert big.shards == 3 and len(files) == 3
    assert big.size == sum(p.stat().st_size for p in files)
    assert big.info is not None and big.info.parameters == 5 * 4 * 8  # all five tensors, not the first shard's two
    assert (big.info.name, big.info.architecture, big.info.context_length) == ("Big", "qwen2", 32768)
    assert len(big.info.tensors) == 5
    assert read_info(big.path).parameters == 2 * 4 * 8


def test_unreadable_files_are_entries_with_the_error(machine: Machine) -> None:
    entries = by_name(models(environ=machine.env))
    mine = str(machine.mine)
    gap = entries[f"{mine}/gap-00001-of-00003.gguf"]
    assert gap.info is None and gap.shards == 2
    assert gap.error is not None and gap.error.startswith("shard 2 of 3 missing") and "download" in gap.error
    notes = entries[f"{mine}/notes.gguf"]
    assert notes.info is None and notes.error is not None and "is not a GGUF file" in notes.error
    loop = entries[f"{mine}/loop.gguf"]
    assert loop.info is None and loop.error is not None and loop.error.startswith("no such model file")
    odd = entries[f"{mine}/<b>odd&name.gguf"]
    assert odd.info is None and odd.error is not None and "cannot be read" in odd.error


def test_every_name_loads_the_file_it_lists(machine: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    # hf: names go through huggingface_hub's own resolver, offline, against the test's cache
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(machine.hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    readable = [e for e in models(environ=machine.env) if e.info is not None]
    assert len(readable) == 5
    for entry in readable:
        assert resolve_model(entry.name, download=False, environ=machine.env).resolve() == entry.path.resolve()


def test_text_and_html_tables(machine: Machine) -> None:
    library = models(environ=machine.env, hardware=CPU_ONLY)
    text = str(library)
    header, *lines = text.splitlines()
    assert header.split("  ")[0] == "name" and "quantisation" in header and "chat template" in header
    row = next(line for line in lines if line.startswith(DEFAULT_MODEL))
    memory = by_name(library)[DEFAULT_MODEL].memory
    assert memory is not None
    assert row.split() == [DEFAULT_MODEL, "llama", "135M", "Q4_1", *human_bytes(machine.default.stat().st_size).split(),
                           "8192", "yes", "yes", f"({memory / 2**20:.0f}", "MiB)"]
    big = next(line for line in lines if line.startswith("hf:acme/tiny-GGUF/F16/big"))
    assert "(3 shards)" in big and "qwen2" in big and "32768" in big
    notes = next(line for line in lines if line.startswith(f"{machine.mine}/notes.gguf"))
    assert "✗" in notes and "is not a GGUF file" in notes
    assert repr(library) == text
    assert lines[-len(library.notes):] == list(library.notes)
    assert library.notes[0].startswith("9 model(s) found in ")

    page = library._repr_html_()
    assert page.count("<tr>") == 1 + len(library)
    assert "&lt;b&gt;odd&amp;name.gguf" in page and "<b>odd" not in page
    assert f'<td colspan="{len(library.headers) - 1}">' in page and "<th>fits in RAM? (CPU)</th>" in page
    assert f'title="{machine.more}/other.gguf"' in page


@pytest.mark.parametrize("variables", [{}, {"HF_HOME": "/data/hf"}, {"XDG_CACHE_HOME": "/xdg"},
                                       {"HF_HUB_CACHE": "/hub", "HF_HOME": "/data/hf"}], ids=str)
def test_the_hub_cache_is_where_huggingface_hub_downloads_to(variables: dict[str, str]) -> None:
    """Asked of huggingface_hub itself in a fresh process: its constants are fixed at its first import."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "XDG_"))}
    environ.update(variables)
    theirs = subprocess.run([sys.executable, "-c", "import huggingface_hub.constants as c; print(c.HF_HUB_CACHE)"],
                            env=environ, capture_output=True, text=True, check=True).stdout.strip()
    assert hf_hub_cache(environ) == Path(theirs)


def test_hf_home_and_an_empty_machine(tmp_path: Path, machine: Machine) -> None:
    home = tmp_path / "hf-home"
    home.mkdir()
    machine.hub.rename(home / "hub")
    found = models(dirs=[], environ={"ROCM_NB_CACHE": str(tmp_path / "none"), "HF_HOME": str(home)})
    assert [e.name for e in found] == ["hf:acme/tiny-GGUF/F16/big-00001-of-00003.gguf",
                                       "hf:acme/tiny-GGUF/tiny.Q8_0.gguf"]
    empty = models(dirs=[], environ={"ROCM_NB_CACHE": str(tmp_path / "none"), "HF_HUB_CACHE": str(tmp_path / "x")})
    assert len(empty) == 0 and "rocm-nb pull" in str(empty) and "ROCM_NB_MODEL_DIR" in empty._repr_html_()


def test_dirs_replace_the_environment_variable(machine: Machine) -> None:
    only_more = models(str(machine.more), environ=machine.env)
    assert [e.source for e in only_more].count("directory") == 1
    assert f"{machine.more}/other.gguf" in by_name(only_more)


def test_names_for_completion_read_no_header(machine: Machine) -> None:
    names = model_names(environ=machine.env)
    assert names[0] == DEFAULT_MODEL and names.count(DEFAULT_MODEL) == 1
    # every model file found, and the catalogue's names (pulled on first use) though not downloaded
    assert set(names[1:]) == ({e.name for e in models(environ=machine.env)} | set(CATALOGUE)) - {DEFAULT_MODEL}


def test_metadata_is_cached_by_path_size_and_mtime(machine: Machine) -> None:
    other = machine.more / "other.gguf"
    first = by_name(models(environ=machine.env))[str(other)].info
    assert by_name(models(environ=machine.env))[str(other)].info is first  # not read again
    write_gguf(other, "Other, retrained", ctx=16384)
    changed = by_name(models(environ=machine.env))[str(other)].info
    assert changed is not None and (changed.name, changed.context_length) == ("Other, retrained", 16384)


def test_a_40_gb_model_is_described_from_its_header_alone(tmp_path: Path) -> None:
    """A file as big as a 70B Q4 model, sparse: its tensor data does not exist on disk."""
    path = tmp_path / "huge" / "huge-70b.Q4_0.gguf"
    data_start = write_huge_gguf(path)
    size = path.stat().st_size
    assert size > 40 * 10**9 and path.stat().st_blocks * 512 < 64 * 2**20  # sparse: no tensor data on disk

    entry = models(path.parent, environ={"ROCM_NB_CACHE": str(tmp_path), "HF_HUB_CACHE": str(tmp_path)},
                   hardware=CPU_ONLY)[0]
    assert entry.info is not None and entry.size == size
    assert entry.info.parameters == HUGE_COUNT * HUGE_SHAPE[0] * HUGE_SHAPE[1] and entry.info.context_length == 131072
    # nothing past the header was read: the tensor data is not in the page cache (reading 1 GiB of it puts 1 GiB there);
    # how fast that is, is measured by `make bench` (figure `files`)
    assert resident_bytes(path, data_start) <= 2**20


def resident_bytes(path: Path, start: int) -> int:
    """Bytes of ``path`` from ``start`` on that are in the page cache (mincore(2) on a fresh mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size, page = path.stat().st_size, mmap.PAGESIZE
    with path.open("rb") as handle:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, handle.fileno(), 0)
    assert address not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    try:
        pages = np.zeros(-(-size // page), dtype=np.uint8)
        assert libc.mincore(address, size, pages.ctypes.data) == 0, os.strerror(ctypes.get_errno())
    finally:
        libc.munmap(address, size)
    return int((pages[start // page + 1:] & 1).sum()) * page


def test_fits_on_the_cpu_compares_everything_with_available_ram(machine: Machine) -> None:
    import psutil

    library = models(environ=machine.env, hardware=CPU_ONLY)
    assert library.headers[-1] == "fits in RAM? (CPU)"
    default = by_name(library)[DEFAULT_MODEL]
    assert default.info is not None and default.info.context_length == 8192
    load = estimate(default.info, ctx_size=8192, gpu_layers=0)  # what LocalModel(name) asks for on the CPU
    assert default.memory == load.total and load.vram == 0 and default.fits is True
    assert default.memory < psutil.virtual_memory().available
    deep = by_name(library)[f"{machine.mine}/nested/deeper/mamba.gguf"]
    assert deep.info is not None and deep.memory == estimate(deep.info, ctx_size=1024).total  # trained ctx < 8192
    assert "RAM available now" in library.notes[-1]
    assert all(e.memory is None and e.fits is None for e in library if e.info is None)


def rocm(*gpus: GPU, visible: str | None = None) -> Hardware:
    return Hardware("rocm", gpus, visible, ())


def test_fits_on_a_gpu_uses_the_visible_gpu_with_the_most_free_vram(machine: Machine) -> None:
    apu = GPU(0, "AMD Radeon 780M", "gfx1103", "amd", 32 * GiB, 0, True)  # the most "VRAM", but masked
    small = GPU(1, "AMD Radeon RX 7600", "gfx1102", "amd", 8 * GiB, 7 * GiB, False)
    big = GPU(2, "AMD Radeon RX 7900 XTX", "gfx1100", "amd", 24 * GiB, 2 * GiB, False)
    library = models(environ=machine.env, hardware=rocm(apu, small, big, visible="1,2"))
    default = by_name(library)[DEFAULT_MODEL]
    assert default.info is not None and default.info.block_count is not None
    every_layer = estimate(default.info, ctx_size=8192, gpu_layers=default.info.block_count + 1)
    assert default.memory == every_layer.vram and default.fits is True
    assert library.headers[-1] == "fits in VRAM?"
    assert "GPU 2 (AMD Radeon RX 7900 XTX), whose 22.0 GiB of free VRAM is the most" in library.notes[-1]
    assert f"yes ({default.memory / 2**20:.0f} MiB)" in str(library)


def test_fits_answers_no_when_the_free_vram_is_too_small(machine: Machine) -> None:
    default_vram = by_name(models(environ=machine.env, hardware=rocm(
        GPU(0, "AMD Radeon RX 6600", "gfx1032", "amd", 8 * GiB, 0, False))))[DEFAULT_MODEL].memory
    assert default_vram is not None
    tight = GPU(0, "AMD Radeon RX 6600", "gfx1032", "amd", 8 * GiB, 8 * GiB - GPU_MARGIN - default_vram + 1, False)
    entries = by_name(models(environ=machine.env, hardware=rocm(tight)))
    assert entries[DEFAULT_MODEL].fits is False  # one byte short, once the margin is kept free
    tiny = entries["hf:acme/tiny-GGUF/tiny.Q8_0.gguf"]
    assert tiny.fits is True and tiny.memory is not None and tiny.memory < default_vram
    unknown = models(environ=machine.env, hardware=rocm(GPU(0, "AMD Radeon RX 6600", "gfx1032", "amd", None, None,
                                                            False)))
    assert all(e.fits is None for e in unknown) and "free VRAM unknown" in unknown.notes[-1]
    assert f"{DEFAULT_MODEL} " in str(unknown) and str(unknown).splitlines()[1].endswith(" ?")
