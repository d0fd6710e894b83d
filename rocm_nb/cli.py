"""The ``rocm-nb`` command: ``doctor``, ``server install``, ``pull``, ``models``, ``prompt-cache``.

Example:
    >>> main(["pull", "smollm2-135m"])  # already in the cache: checked, not fetched again
    /.../SmolLM2-135M-Instruct.Q4_1.gguf
    0
    >>> main(["models"])  # doctest: +SKIP
    name          architecture  parameters  quantisation  size    trained ctx  chat template
    smollm2-135m  llama         135M        Q4_1          94 MiB  8192         yes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from rocm_nb import __version__
from rocm_nb._escape import printable
from rocm_nb._process import running_records
from rocm_nb.binary import ServerBinary, find_server
from rocm_nb.binary._build import install_server
from rocm_nb.binary._rocwmma import build_options
from rocm_nb.binary._smoke import smoke_test
from rocm_nb.errors import InvalidModel, ModelNotFound, RocmNbError, describe_exit
from rocm_nb.hardware import Hardware, describe, describe_gpu, detect
from rocm_nb.hardware._hsa import server_env
from rocm_nb.hardware._tools import run_tool
from rocm_nb.hardware._vulkan_devices import vulkan_gpus, why_not_chosen
from rocm_nb.modelfiles.catalog import CATALOGUE, DEFAULT_MODEL, models_dir, pull, read_info, resolve_model, verify
from rocm_nb.modelfiles.library import models
from rocm_nb.server.warm import clear_saved_caches, saved_caches

__all__ = ["main"]


def _print(text: object = "", *, file: TextIO | None = None) -> None:
    """``print`` with control characters escaped: file names, GGUF strings and server logs reach the terminal."""
    print(printable(text, lines=True), file=file)


def _doctor(args: argparse.Namespace) -> int:
    problems = 0
    _print(f"rocm_nb {__version__} · Python {platform.python_version()} · {platform.platform()}")
    _print("\nHardware")
    hardware = detect()
    for line in describe(hardware):
        _print(f"  {line}")
    if os.environ.get("HSA_OVERRIDE_GFX_VERSION"):
        _print(f"  HSA_OVERRIDE_GFX_VERSION={os.environ['HSA_OVERRIDE_GFX_VERSION']} is set: llama-server inherits it")
    _print("\nVulkan")
    for line in _vulkan(hardware):
        _print(f"  {line}")
    _print("\nllama-server")
    try:
        binary = find_server(backend=hardware.backend)
        _print(f"  {binary.path}  ({binary.source}, {binary.backend}, {binary.version})")
        if binary.rpc_path is not None:
            _print(f"  RPC worker: {binary.rpc_path}")
        problems += _smoke(binary, hardware)
    except RocmNbError as exc:
        problems += 1
        _print(f"  missing: {exc}")
    for line in build_options(hardware):
        _print(f"  {line}")
    _print("\nRunning on this machine")
    records = running_records()
    for record in records:
        if "rpc" in record and "model" not in record:
            _print(f"  RPC worker pid {record['server_pid']} on {record['rpc']} (owner pid {record['owner_pid']})")
        else:
            workers = f", layers split over RPC workers {', '.join(record['rpc'])}" if record.get("rpc") else ""
            _print(f"  llama-server pid {record['server_pid']} on port {record.get('port')}: "
                  f"{printable(record.get('model'))} (owner pid {record['owner_pid']}){workers}")
    if not records:
        _print("  nothing")
    _print("\nDefault model")
    entry = CATALOGUE[DEFAULT_MODEL]
    path = models_dir() / entry.filename
    if path.is_file():
        _print(f"  {read_info(path).summary(DEFAULT_MODEL)}\n  {path}")
    else:
        problems += 1
        _print(f"  {DEFAULT_MODEL} is not downloaded yet. Next step: rocm-nb pull {DEFAULT_MODEL}")
    _print("\nCatalogue models (SHA-256)")
    for name in CATALOGUE:
        try:
            _print(f"  {name}: {verify(name)}")
        except ModelNotFound:
            _print(f"  {name}: not downloaded")
        except InvalidModel as exc:
            problems += 1
            _print(f"  {name}: CHANGED: {exc}")
    _print("\nAll good." if not problems else f"\n{problems} thing(s) to fix, see above.")
    return 0 if not problems else 1


def _vulkan(hardware: Hardware) -> list[str]:
    """Every Vulkan device vulkaninfo lists, with its type and memory, and whether rocm_nb would use it."""
    gpus, source = vulkan_gpus(run_tool)
    if not gpus:
        return [source]
    lines = []
    for gpu in gpus:
        why = why_not_chosen(gpu)
        if why is not None:
            use = (f"never auto-selected: {why}; LocalModel(..., backend='vulkan') or ROCM_NB_BACKEND=vulkan uses "
                   "it, with a warning" if gpu.device_type == "software" else
                   f"never auto-selected: {why}; LocalModel(..., backend='vulkan') uses it")
        elif hardware.backend == "vulkan":
            use = "used: Vulkan serves this machine"
        else:
            use = f"not used: the {hardware.backend} backend serves this machine; backend='vulkan' would use it"
        lines += [describe_gpu(gpu), f"  {use}"]
    return [*lines, f"(read from {source})"]


def _smoke(binary: ServerBinary, hardware: Hardware) -> int:
    """Smoke-test the binary doctor found (load a tiny model, decode, check) on the devices LocalModel would use;
    1 if it failed."""
    manifest = binary.path.with_name("manifest.json")
    if binary.source == "cache" and manifest.is_file():
        data = json.loads(manifest.read_text())
        _print(f"  build: {data.get('variant', 'unknown')} ({data.get('kept_because', 'no reason recorded')}), "
              f"for CPU features {' '.join(data.get('cpu_features', [])) or 'of any x86-64'}")
    result = smoke_test(binary.path, gpu=binary.backend != "cpu",
                        environ={**os.environ, **server_env(hardware, os.environ)})
    if result.passed:
        _print(f"  smoke test: passed in {result.seconds:.1f} s ({result.detail})")
        return 0
    step = describe_exit(result.returncode)[1] if result.returncode is not None else ""
    _print(f"  smoke test: FAILED after {result.seconds:.1f} s: {result.detail}")
    _print("  " + "\n  ".join(result.log_tail.splitlines()[-8:]))
    _print(f"  Next step: {step or 'rebuild it: rocm-nb server install --rebuild'}; if a rebuild fails the same way, "
          "try a portable build: rocm-nb server install --rebuild --portable")
    return 1


def _install(args: argparse.Namespace) -> int:
    binary = install_server(args.backend, rpc=args.rpc, force=args.rebuild, portable=args.portable,
                            jobs=args.jobs, rocwmma_fattn=args.rocwmma_fattn, vulkan_headers=args.vulkan_headers,
                            fetch_vulkan_headers=args.fetch_vulkan_headers)
    _print(f"llama-server ready: {binary.path} ({binary.backend}, {binary.version})")
    return 0


def _pull(args: argparse.Namespace) -> int:
    _print(pull(args.name))
    return 0


def _models(args: argparse.Namespace) -> int:
    _print(models(args.dirs or None))
    for name, entry in sorted(CATALOGUE.items()):
        try:
            resolve_model(name, download=False)  # a hub entry: in the Hugging Face cache, or not
        except (ModelNotFound, ModuleNotFoundError):
            _print(f"\nnot downloaded yet: {name}  {entry.description}\n  next step: rocm-nb pull {name}")
    return 0


def _prompt_cache(args: argparse.Namespace) -> int:
    if args.cache_command == "clear":
        files, size = clear_saved_caches(args.model)
        _print(f"removed {files} file(s), {size / 2**20:.1f} MiB" + (f" of {args.model}" if args.model else ""))
        return 0
    _print(saved_caches())
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rocm-nb", description="Local LLMs for Jupyter on your own GPU.")
    parser.add_argument("--version", action="version", version=f"rocm_nb {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    doctor = commands.add_parser("doctor", help="check the backend, GPUs, llama-server (smoke test) and model")
    doctor.set_defaults(run=_doctor)

    server = commands.add_parser("server", help="manage the llama-server binary")
    server_commands = server.add_subparsers(dest="server_command", required=True)
    install = server_commands.add_parser("install", help="find or build llama-server for this machine")
    install.add_argument("--backend", choices=["rocm", "cuda", "vulkan", "cpu"], default=None,
                         help="override the backend detected from the hardware")
    install.add_argument("--rpc", action="store_true", help="also build the RPC worker (ggml-rpc-server)")
    install.add_argument("--rebuild", "--force", action="store_true", dest="rebuild",
                         help="build again even if the cache has an install that runs on this CPU")
    install.add_argument("--portable", action="store_true",
                         help="build for a baseline CPU (AVX2/FMA/F16C, or SSE4.2) rather than this CPU only")
    install.add_argument("--rocwmma-fattn", action="store_true",
                         help="ROCm on RDNA3+ or CDNA: flash attention with rocWMMA (-DGGML_HIP_ROCWMMA_FATTN=ON)")
    install.add_argument("--vulkan-headers", type=Path, default=None, metavar="DIR",
                         help="Vulkan: headers 1.3.272 or later to build with (a folder holding vulkan/vulkan_core.h, "
                              "or a prefix with include/ or usr/include/)")
    install.add_argument("--fetch-vulkan-headers", action="store_true",
                         help="Vulkan: if no headers new enough are found, fetch Debian 13's libvulkan-dev into the "
                              "rocm_nb cache (apt-get download; nothing is installed system-wide)")
    install.add_argument("-j", "--jobs", type=int, default=None, help="parallel build jobs")
    install.set_defaults(run=_install)

    pull_cmd = commands.add_parser("pull", help="download a catalogue model into the cache")
    pull_cmd.add_argument("name", nargs="?", default=DEFAULT_MODEL)
    pull_cmd.set_defaults(run=_pull)

    models_cmd = commands.add_parser("models", help="list the GGUF models on this machine (the model library)")
    models_cmd.add_argument("dirs", nargs="*", metavar="DIR",
                            help="folders to scan instead of ROCM_NB_MODEL_DIR (the caches are always scanned)")
    models_cmd.set_defaults(run=_models)

    cache = commands.add_parser(
        "prompt-cache", help="list or clear the prompt caches kept across restarts (ROCM_NB_WARM_DIR)",
        description="Each model's prompt cache (its KV cache) is saved when it closes and restored when it starts "
                    "again; this lists them with their sizes, or clears them. Without a subcommand: list.")
    cache.set_defaults(run=_prompt_cache, cache_command="list")
    cache_commands = cache.add_subparsers(dest="cache_command")
    cache_commands.add_parser("list", help="each saved slot: model, context, tokens, size, last use; the total")
    clear = cache_commands.add_parser("clear", help="delete saved caches (all, with the quarantine, or one model's)")
    clear.add_argument("model", nargs="?", default=None,
                       help="only this model's (its file name, stem or path); default: everything")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rocm-nb`` console script; returns the exit status.

    Example:
        >>> main(["--version"])  # doctest: +SKIP
        rocm_nb 0.1.0
    """
    args = _parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except RocmNbError as exc:
        _print(f"rocm-nb: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _print("rocm-nb: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    sys.exit(main())
