"""One bad GGUF costs milliseconds and an error row, never the library (issue 21, item 5).

Each file is written byte by byte here, as an attacker would: arrays nested
5,000 deep, a NaN or infinite context length, two billion layers in a
176-byte file, counts of 2^62 over a sparse file. Each is read in a child
process under an address-space limit and a time limit
(:mod:`tests.support.bounded`), so a regression fails the test with a
``MemoryError`` or a timeout rather than taking the machine down; the limits
are generous (seconds where the fixed code takes milliseconds, and where the
old code took minutes), so they catch the regression without timing anything.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import pytest

from rocm_nb import InvalidModel
from rocm_nb.modelfiles.catalog import read_info
from tests.support.bounded import run_bounded
from tests.support.gguf_files import write_gguf

pytestmark = pytest.mark.unit

U32, F32, STRING, ARRAY, F64 = 4, 6, 8, 9, 12
SPARSE = 2 * 2**30
"""The size of the sparse files: a hole, no disk, and enough zeros to take the old walk minutes."""


def text(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("<Q", len(raw)) + raw


def entry(key: str, kind: int, payload: bytes) -> bytes:
    return text(key) + struct.pack("<I", kind) + payload


def gguf(*entries: bytes, n_kv: int | None = None, n_tensors: int = 0) -> bytes:
    count = len(entries) if n_kv is None else n_kv
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, count) + b"".join(entries)


LLAMA = entry("general.architecture", STRING, text("llama"))


def nested_arrays(depth: int) -> bytes:
    """An array of one array of one array ... ``depth`` deep, ending in one u32."""
    return struct.pack("<IQ", ARRAY, 1) * (depth - 1) + struct.pack("<IQI", U32, 1, 7)


HOSTILE: dict[str, tuple[bytes, int, str]] = {
    # name: (the file's bytes, the size to make it (sparse), what the InvalidModel must say)
    "deep": (gguf(LLAMA, entry("x.deep", ARRAY, nested_arrays(5000))), 0,
             r"metadata entry 1 \('x.deep'\): arrays nested more than 8 deep"),
    "nan-ctx": (gguf(LLAMA, entry("llama.context_length", F32, struct.pack("<f", float("nan")))), 0,
                r"llama.context_length is nan, not a whole number"),
    "inf-ctx": (gguf(LLAMA, entry("llama.context_length", F64, struct.pack("<d", float("inf")))), 0,
                r"llama.context_length is inf, not a whole number"),
    "layers": (gguf(LLAMA, entry("llama.block_count", U32, struct.pack("<I", 2_000_000_000)),
                    entry("llama.context_length", U32, struct.pack("<I", 4096)),
                    entry("llama.embedding_length", U32, struct.pack("<I", 4096))), 0,
               r"llama.block_count is 2,000,000,000, but llama.cpp loads at most 512 layers"),
    "strings": (gguf(LLAMA, entry("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, 2**62))), SPARSE,
                r"'tokenizer.ggml.tokens'\): 4611686018427387904 array items cannot fit in the \d+ bytes left"),
    "arrays": (gguf(LLAMA, entry("x.arrays", ARRAY, struct.pack("<IQ", ARRAY, 2**62))), SPARSE,
               r"'x.arrays'\): 4611686018427387904 array items cannot fit"),
    "many-strings": (gguf(LLAMA, entry("x.many", ARRAY, struct.pack("<IQ", STRING, SPARSE // 8 - 64))), SPARSE,
                     r"'x.many'\): 268,435,392 array items is more than the 16,777,216 rocm_nb reads"),
    "n_kv": (gguf(LLAMA, n_kv=2**62), SPARSE, r"4611686018427387904 metadata entries cannot fit"),
    "n_kv-fits": (gguf(LLAMA, n_kv=SPARSE // 13 - 8), SPARSE,
                  r"165,191,041 metadata entries is more than the 65,536 rocm_nb reads"),
    "n_tensors": (gguf(LLAMA, n_tensors=2**62), SPARSE, r"4611686018427387904 tensors cannot fit"),
}


def write(directory: Path, name: str) -> Path:
    data, size, _ = HOSTILE[name]
    path = directory / f"{name}.gguf"
    path.write_bytes(data)
    if size:
        os.truncate(path, size)  # a hole: the old walk read its zeros as billions of empty strings
    return path


@pytest.mark.timeout(240)
def test_a_hostile_header_is_a_clear_invalid_model_in_milliseconds(tmp_path: Path) -> None:
    """Each file in turn, in one bounded child; a timeout names the file it was reading (on stderr)."""
    paths = {name: str(write(tmp_path, name)) for name in sorted(HOSTILE)}
    out = run_bounded(f"""
        import sys
        for name, path in {paths!r}.items():
            print(f"reading {{name}}", file=sys.stderr, flush=True)
            try:
                read_info(path)
                out[name] = None
            except InvalidModel as exc:
                out[name] = str(exc)
        """, setup="from rocm_nb import InvalidModel\nfrom rocm_nb.modelfiles.catalog import read_info",
        mapped=SPARSE, timeout=120)
    for name, path in paths.items():
        assert out[name] is not None, f"{name}: read_info accepted it"
        assert path in out[name] and re.search(HOSTILE[name][2], out[name]), (name, out[name])


@pytest.mark.timeout(120)
def test_every_hostile_file_is_one_error_row_and_the_good_file_is_listed(tmp_path: Path) -> None:
    """``rocm-nb models`` and ``rocm_nb.models()`` over all of them: one row each, the real model described."""
    for name in HOSTILE:
        write(tmp_path, name)
    write_gguf(tmp_path / "good.gguf", "Good", ctx=2048)
    out = run_bounded(f"""
        import contextlib, io
        from rocm_nb.hardware import Hardware
        from rocm_nb.modelfiles.library import models
        from rocm_nb.cli import main
        library = models({str(tmp_path)!r}, hardware=Hardware("cpu", (), None, ()))
        out["rows"] = {{entry.path.name: (entry.error, entry.info.context_length if entry.info else None)
                       for entry in library}}
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            out["status"] = main(["models", {str(tmp_path)!r}])
        out["printed"] = printed.getvalue()
        """, setup="import rocm_nb", mapped=SPARSE, timeout=90,
        env={"ROCM_NB_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_CACHE": str(tmp_path / "no-hub")})
    rows = out["rows"]
    assert sorted(rows) == sorted([f"{name}.gguf" for name in HOSTILE] + ["good.gguf"])
    assert rows["good.gguf"] == [None, 2048]
    for name in HOSTILE:
        error, _ = rows[f"{name}.gguf"]
        assert error and re.search(HOSTILE[name][2], error), (name, error)
    assert out["status"] == 0
    assert "good.gguf" in out["printed"] and out["printed"].count("✗") == len(HOSTILE)


def test_a_number_of_the_wrong_type_is_unknown_not_an_error(tmp_path: Path) -> None:
    """A context length written as text or a bool is not read as a number (as before), and not an error."""
    path = tmp_path / "text-ctx.gguf"
    path.write_bytes(gguf(LLAMA, entry("llama.context_length", STRING, text("4096")),
                          entry("llama.block_count", 7, b"\x01")))
    info = read_info(path)
    assert info.context_length is None and info.block_count is None


def test_negative_and_fractional_counts_are_refused(tmp_path: Path) -> None:
    for kind, payload, shown in ((5, struct.pack("<i", -1), "-1"), (F32, struct.pack("<f", 2.5), "2.5")):
        path = tmp_path / f"ctx-{shown}.gguf"
        path.write_bytes(gguf(LLAMA, entry("llama.context_length", kind, payload)))
        with pytest.raises(InvalidModel, match=rf"llama.context_length is {shown}, not a whole number"):
            read_info(path)


def test_long_string_values_are_skipped_and_long_keys_refused(tmp_path: Path) -> None:
    """An embedded 2 MiB tokenizer.json is stepped over, not kept; a 100 KiB key is garbage."""
    path = tmp_path / "big-json.gguf"
    path.write_bytes(gguf(LLAMA, entry("tokenizer.huggingface.json", STRING, text("x" * 2**21)),
                          entry("general.name", STRING, text("Kept"))))
    info = read_info(path)
    assert info.name == "Kept"
    bad = tmp_path / "long-key.gguf"
    bad.write_bytes(gguf(entry("k" * 100_000, U32, struct.pack("<I", 1))))
    with pytest.raises(InvalidModel, match="a string of 100,000 bytes is longer than the 65,536 rocm_nb reads"):
        read_info(bad)


def test_arrays_nested_within_the_cap_and_real_vocabularies_still_read(tmp_path: Path) -> None:
    path = tmp_path / "nested.gguf"
    path.write_bytes(gguf(LLAMA, entry("x.nested", ARRAY, nested_arrays(8)),
                          entry("general.name", STRING, text("After"))))
    assert read_info(path).name == "After"
