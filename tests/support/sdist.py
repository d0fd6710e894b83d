"""The pinned llama.cpp sources (in the llama-cpp-python sdist of the shared cache), for facts tests check."""

from __future__ import annotations

import tarfile
from pathlib import Path

from rocm_nb.binary import LLAMA_CPP_PYTHON_VERSION

SDIST = Path.home() / ".cache/rocm_nb/servers/sdist" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"


def pinned_source(suffix: str) -> str:
    """The text of the one file of the pinned llama.cpp whose path ends with ``suffix``."""
    with tarfile.open(SDIST) as archive:
        [member] = [m for m in archive.getmembers() if m.name.endswith(suffix)]
        handle = archive.extractfile(member)
        assert handle is not None
        return handle.read().decode()
