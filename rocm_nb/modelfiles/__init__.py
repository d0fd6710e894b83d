"""Model files: resolve a name to a GGUF, read its header, plan its memory, list what is on this machine.

:mod:`~rocm_nb.modelfiles.catalog` resolves a catalogue name, a path or an
``hf:`` reference to a GGUF and reads its metadata;
:mod:`~rocm_nb.modelfiles.fit` estimates memory and plans the offload;
:mod:`~rocm_nb.modelfiles.library` lists the GGUFs on this machine;
:mod:`~rocm_nb.modelfiles.convert` writes a GGUF from safetensors (MiniLM).

Example:
    >>> from rocm_nb.modelfiles.catalog import DEFAULT_MODEL
    >>> DEFAULT_MODEL
    'smollm2-135m'
"""
