"""What instruction sets this CPU has, as ``/proc/cpuinfo`` names them.

A llama-server built with ``-march=native`` assumes every instruction set of
the CPU that built it; on a CPU that lacks one it dies with SIGILL. A cache
shared by several machines (an NFS home behind JupyterHub, a copied cache)
is normal, so every cache install records the features its build assumed
and is used only on a CPU that has them all (:func:`missing`).

On x86-64 only the instruction-set flags count (``avx2``, ``avx512f``…), not
the flags that describe the platform (``hypervisor``, ``constant_tsc``), so a
build is not refused over a difference that cannot make it crash. On other
architectures every listed feature counts.

Example:
    >>> text = "processor: 0\\nflags\\t\\t: fpu sse4_2 avx avx2 fma hypervisor\\n"
    >>> sorted(cpu_features(text))
    ['avx', 'avx2', 'fma', 'sse4_2']
    >>> sorted(missing({"avx2", "avx512f"}, {"avx", "avx2"}))
    ['avx512f']
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from pathlib import Path

__all__ = ["AMX_FEATURES", "cpu_features", "missing", "this_cpu"]

AMX_FEATURES = frozenset({"amx_tile", "amx_int8", "amx_bf16", "amx_fp16", "amx_complex"})
"""Intel AMX, whose ggml path crashes at the pinned llama.cpp (no build enables it)."""

# The x86 instruction-set extensions a compiler may use; names as /proc/cpuinfo writes them.
_X86_ISA = frozenset({
    "sse", "sse2", "pni", "ssse3", "sse4_1", "sse4_2", "popcnt", "abm", "avx", "avx2", "fma", "fma4", "f16c",
    "bmi1", "bmi2", "movbe", "adx", "aes", "pclmulqdq", "sha_ni", "rdrand", "rdseed", "xsave", "lzcnt",
    "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl", "avx512ifma", "avx512vbmi", "avx512_vbmi2",
    "avx512_vnni", "avx512_bitalg", "avx512_vpopcntdq", "avx512_bf16", "avx512_fp16", "avx_vnni",
    "avx_vnni_int8", "avx_ifma", "gfni", "vaes", "vpclmulqdq", "clflushopt", "clwb", "serialize",
    *AMX_FEATURES,
})
_FLAG_KEYS = ("flags", "features")  # x86 writes "flags", arm64 "Features"


def cpu_features(cpuinfo: str, *, machine: str | None = None) -> frozenset[str]:
    """The instruction-set features in a ``/proc/cpuinfo`` text (its first processor's).

    Example:
        >>> sorted(cpu_features("Features\\t: fp asimd sve\\n", machine="aarch64"))
        ['asimd', 'fp', 'sve']
    """
    machine = machine or platform.machine()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in _FLAG_KEYS:
            flags = frozenset(value.split())
            return flags & _X86_ISA if machine in ("x86_64", "AMD64", "i686") else flags
    return frozenset()


def this_cpu(root: Path = Path("/")) -> frozenset[str]:
    """The features of the CPU this process runs on; empty where ``/proc/cpuinfo`` cannot be read.

    Example:
        >>> this_cpu(Path("/nonexistent"))  # a root with no proc/cpuinfo: no features known
        frozenset()
    """
    try:
        return cpu_features((root / "proc/cpuinfo").read_text(errors="replace"))
    except OSError:
        return frozenset()


def missing(required: Iterable[str], available: Iterable[str]) -> frozenset[str]:
    """The required features that ``available`` lacks (empty: a build for ``required`` runs here).

    Example:
        >>> missing(["avx2"], ["avx2", "fma"])
        frozenset()
    """
    return frozenset(required) - frozenset(available)
