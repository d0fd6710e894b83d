"""Every exception rocm_nb raises, in one tree.

::

    RocmNbError
    ├── BinaryNotFound (FileNotFoundError)   no usable llama-server; says how to get one
    ├── BuildError                           building llama-server failed: flags, log tail
    ├── ModelNotFound (FileNotFoundError)    path/name/repo does not resolve
    ├── InvalidModel (ValueError)            not a GGUF, truncated, unsupported arch
    ├── ServerStartError                     exited while loading: .returncode, .log_tail, hint
    ├── ServerStartTimeout (TimeoutError)    still not ready after the start timeout
    ├── ServerCrashed                        died after it was ready: .returncode, .log_tail
    ├── GenerationError                      non-2xx, malformed stream or a stalled server
    └── ModelClosed (RuntimeError)           used after close()

Every message says what happened, what was tried and what to do next. Errors
raised while a stream was running keep the text already streamed in
``.partial``, so nothing the user saw is lost.

Example:
    >>> from rocm_nb.errors import RocmNbError, ModelNotFound
    >>> issubclass(ModelNotFound, (RocmNbError, FileNotFoundError))
    True
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BinaryNotFound",
    "BuildError",
    "GenerationError",
    "InvalidModel",
    "ModelClosed",
    "ModelNotFound",
    "RocmNbError",
    "ServerCrashed",
    "ServerStartError",
    "ServerStartTimeout",
]


class RocmNbError(Exception):
    """Base class of every rocm_nb error.

    Example:
        >>> isinstance(ModelClosed("closed"), RocmNbError)
        True
    """


class BinaryNotFound(RocmNbError, FileNotFoundError):
    """No usable ``llama-server`` was found (or the one named does not work).

    Example:
        >>> raise BinaryNotFound("no llama-server")  # doctest: +SKIP
    """


class BuildError(RocmNbError):
    """Building llama-server from source failed.

    Example:
        >>> BuildError("cmake failed", flags=["-DGGML_HIP=ON"], log_tail="error").flags
        ['-DGGML_HIP=ON']
    """

    def __init__(self, message: str, *, flags: Sequence[str] = (), log_tail: str = "") -> None:
        super().__init__(message)
        self.flags = list(flags)
        self.log_tail = log_tail


class ModelNotFound(RocmNbError, FileNotFoundError):
    """A model path, catalogue name or hub reference does not resolve.

    Example:
        >>> str(ModelNotFound("no such model: x.gguf"))
        'no such model: x.gguf'
    """


class InvalidModel(RocmNbError, ValueError):
    """The file is not a usable GGUF model (wrong magic, truncated, unsupported).

    Example:
        >>> issubclass(InvalidModel, ValueError)
        True
    """


class _ProcessError(RocmNbError):
    """A llama-server process that ended: its return code and last log lines."""

    def __init__(self, message: str, *, returncode: int | None, log_tail: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.log_tail = log_tail


class ServerStartError(_ProcessError):
    """llama-server exited while it was loading the model.

    ``.hint`` says what to change (for example fewer GPU layers after an
    out-of-memory load).

    Example:
        >>> e = ServerStartError("exited", returncode=1, log_tail="", hint="try -ngl 0")
        >>> e.hint
        'try -ngl 0'
    """

    def __init__(
        self, message: str, *, returncode: int | None, log_tail: str, hint: str = ""
    ) -> None:
        super().__init__(message, returncode=returncode, log_tail=log_tail)
        self.hint = hint


class ServerStartTimeout(RocmNbError, TimeoutError):
    """llama-server did not report ready within the start timeout.

    Example:
        >>> issubclass(ServerStartTimeout, TimeoutError)
        True
    """

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class ServerCrashed(_ProcessError):
    """llama-server died after it was ready (for example during a generation).

    ``.partial`` holds the text streamed before the crash.

    Example:
        >>> ServerCrashed("gone", returncode=-9, log_tail="", partial="Once").partial
        'Once'
    """

    def __init__(
        self, message: str, *, returncode: int | None, log_tail: str, partial: str = ""
    ) -> None:
        super().__init__(message, returncode=returncode, log_tail=log_tail)
        self.partial = partial


class GenerationError(RocmNbError):
    """The server refused a request, sent a malformed stream, or stalled.

    ``.status_code`` is the HTTP status (``None`` when the failure was not an
    HTTP error), ``.body`` the server's answer, ``.partial`` the text streamed
    before the failure.

    Example:
        >>> GenerationError("bad request", status_code=400, body="{}").status_code
        400
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: str = "",
        partial: str = "",
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body
        self.partial = partial


class ModelClosed(RocmNbError, RuntimeError):
    """The model (or client) was used after ``close()``.

    Example:
        >>> issubclass(ModelClosed, RuntimeError)
        True
    """
