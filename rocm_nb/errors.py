"""Every exception rocm_nb raises, in one tree.

The drawing is :func:`error_tree`'s, made from the classes themselves (their
other built-in base, and each one's one-line summary); a test keeps this copy
equal to it, and the documentation draws it the same way::

    RocmNbError                                  Base class of every rocm_nb error.
    ├── BinaryNotFound (FileNotFoundError)       No usable llama-server was found (or the one named does not work).
    ├── BuildError                               Building llama-server from source failed.
    ├── ModelNotFound (FileNotFoundError)        A model path, catalogue name or hub reference does not resolve.
    ├── AmbiguousModel (ValueError)              A server offers several models and the request named none: pass model=.
    ├── InvalidModel (ValueError)                The file is not a usable GGUF (bad magic, truncated, unsupported).
    ├── RuntimeDirError (OSError)                The folder for run records (ROCM_NB_RUNTIME_DIR) cannot be used.
    ├── ServerStartError                         llama-server exited while it was loading the model.
    │   └── ProjectorMismatch                    llama-server refused the image projector (mmproj=) for this model.
    ├── ServerCrashed                            llama-server died after it was ready (for example during a generation).
    ├── ServerStartTimeout (TimeoutError)        llama-server did not report ready within the start timeout.
    ├── GenerationError                          A generation failed: the base of every failure to get a reply.
    │   ├── ServerUnavailable (ConnectionError)  Nothing answers at the server's address, or the connection was lost.
    │   ├── GenerationTimeout (TimeoutError)     A timeout ran out; .phase says which, .timeout its value (s).
    │   ├── StreamProtocolError                  The server's answer is not a well-formed event stream.
    │   ├── SchemaMismatch (ValueError)          The reply is not the JSON asked for (not JSON, or against its schema).
    │   ├── ImagesNotSupported (ValueError)      An image for a model without a projector, or a server that takes none.
    │   └── TextTooLong (ValueError)             A text longer than the embedding server's context; .index says which.
    ├── ModelClosed (RuntimeError)               The model (or client) was used after close().
    └── ModelNotStarted (RuntimeError)           What only a running server has (base_url, api_key) was asked too early.

Every error says what happened, what was tried and what to do next. The
generation and server-process errors keep ``str(exc)`` short: the next step
and the server's last log lines are notes (PEP 678 ``add_note``, printed
under the message in a traceback) and attributes. Errors raised while a
stream was running keep the text already streamed in ``.partial``, so
nothing the user saw is lost. ``except GenerationError`` catches every
generation failure; its subclasses let a caller catch one cause.

Example:
    >>> from rocm_nb.errors import RocmNbError, ModelNotFound
    >>> issubclass(ModelNotFound, (RocmNbError, FileNotFoundError))
    True
"""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator, Sequence
from typing import Any, Literal, TypeVar

__all__ = [
    "AmbiguousModel",
    "BinaryNotFound",
    "BuildError",
    "GenerationError",
    "GenerationTimeout",
    "ImagesNotSupported",
    "InvalidModel",
    "ModelClosed",
    "ModelNotFound",
    "ModelNotStarted",
    "ProjectorMismatch",
    "RocmNbError",
    "RuntimeDirError",
    "SchemaMismatch",
    "ServerCrashed",
    "ServerStartError",
    "ServerStartTimeout",
    "ServerUnavailable",
    "StreamProtocolError",
    "TextTooLong",
    "TimeoutPhase",
    "describe_exit",
    "error_classes",
    "error_tree",
    "with_notes",
]

_SIGNAL_NAMES: dict[int, str] = {
    signal.SIGSEGV: "segmentation fault",
    signal.SIGILL: "illegal instruction",
    signal.SIGKILL: "killed",
    signal.SIGBUS: "bus error",
    signal.SIGABRT: "aborted",
    signal.SIGFPE: "floating-point exception",
    signal.SIGTERM: "terminated",
}
_SIGNAL_STEPS: dict[int, tuple[str, str]] = {  # signal -> (next step while loading, next step mid-stream)
    signal.SIGILL: ("this llama-server was built for another CPU (a cache shared between machines?): "
                    "run `rocm-nb server install --rebuild`",) * 2,
    signal.SIGSEGV: ("run `rocm-nb doctor`, which smoke-tests the binary, and see whether a portable build helps "
                     "(`rocm-nb server install --rebuild --portable`)",
                     "run `rocm-nb doctor`, which smoke-tests the binary; if it passes, report the prompt that "
                     "crashed it"),
    signal.SIGKILL: ("this is often the out-of-memory killer: use fewer GPU layers (gpu_layers=) or a smaller "
                     "context (ctx_size=)",) * 2,
    signal.SIGBUS: ("the model file changed while it was mapped, or sits on a failing disk: check the file "
                    "(`rocm-nb doctor`) and fetch it again if it changed",) * 2,
    signal.SIGABRT: ("llama-server stopped on an internal check: read the log lines, and `rocm-nb doctor` "
                     "checks the setup",) * 2,
}


_E = TypeVar("_E", bound=BaseException)

TimeoutPhase = Literal["connect", "read", "write", "pool", "total"]
"""Which timeout ran out (:attr:`GenerationTimeout.phase`): one of httpx's, or the request's whole deadline."""


def with_notes(exc: _E, *notes: str) -> _E:
    """Add the non-empty ``notes`` to ``exc`` (PEP 678) and return it, for ``raise with_notes(...)``.

    Example:
        >>> exc = with_notes(ModelClosed("closed"), "", "create a new one")
        >>> str(exc), exc.__notes__
        ('closed', ['create a new one'])
    """
    for note in notes:
        if note:
            exc.add_note(note)
    return exc


def describe_exit(returncode: int | None, *, loading: bool = True) -> tuple[str, str]:
    """How a process ended, in words, and the next step for it: ``(what, next_step)``.

    A negative return code is death by a signal, named as such ("crashed with
    SIGSEGV (segmentation fault)"); ``next_step`` is empty when there is no
    advice specific to the way it ended. ``loading`` picks the advice for a
    process that died while loading rather than mid-stream.

    Example:
        >>> describe_exit(-11)[0]
        'crashed with SIGSEGV (segmentation fault)'
        >>> describe_exit(-4)[1].endswith("rocm-nb server install --rebuild`")
        True
        >>> describe_exit(1)
        ('exited with status 1', '')
    """
    if returncode is None:
        return "ended (exit status unknown)", ""
    if returncode >= 0:
        return f"exited with status {returncode}", ""
    try:
        number = signal.Signals(-returncode)
    except ValueError:
        return f"crashed with signal {-returncode}", ""
    name = _SIGNAL_NAMES.get(number)
    what = f"crashed with {number.name}" + (f" ({name})" if name else "")
    steps = _SIGNAL_STEPS.get(number)
    return what, (steps[0] if loading else steps[1]) if steps else ""


class RocmNbError(Exception):
    """Base class of every rocm_nb error.

    Example:
        >>> isinstance(ModelClosed("closed"), RocmNbError)
        True
    """


class BinaryNotFound(RocmNbError, FileNotFoundError):
    """No usable llama-server was found (or the one named does not work).

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


class AmbiguousModel(RocmNbError, ValueError):
    """A server offers several models and the request named none: pass ``model=``.

    ``.models`` lists the ids the server offers.

    Example:
        >>> error = AmbiguousModel("pick one", models=["a", "b"])
        >>> error.models, isinstance(error, ValueError)
        (['a', 'b'], True)
    """

    def __init__(self, message: str, *, models: list[str]) -> None:
        super().__init__(message)
        self.models = models


class InvalidModel(RocmNbError, ValueError):
    """The file is not a usable GGUF (bad magic, truncated, unsupported).

    Example:
        >>> issubclass(InvalidModel, ValueError)
        True
    """


class RuntimeDirError(RocmNbError, OSError):
    """The folder for run records (``ROCM_NB_RUNTIME_DIR``) cannot be used.

    See :func:`rocm_nb._paths.runtime_root`. Raised before any server starts: it is not a folder, it belongs to
    another user, or it cannot be created or written. The message names
    the folder and says what to do (``ROCM_NB_RUNTIME_DIR``).

    Example:
        >>> issubclass(RuntimeDirError, OSError)
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


class ProjectorMismatch(ServerStartError):
    """llama-server refused the image projector (mmproj=) for this model.

    The projector must come with the model: it projects images into that
    model's embedding space, so one made for another model (another width,
    another architecture) is refused while loading. The message quotes the
    server's reason; ``.log_tail`` holds its last log lines.

    Example:
        >>> e = ProjectorMismatch("refused", returncode=1, log_tail="mismatch between text model ...")
        >>> isinstance(e, ServerStartError), e.log_tail
        (True, 'mismatch between text model ...')
    """


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
    """A generation failed: the base of every failure to get a reply.

    Raised as itself when the server refused a request (a non-2xx answer,
    or an error event mid-stream); the subclasses name the other causes.
    ``.status_code`` is the HTTP status (``None`` when the failure was not an
    HTTP error), ``.body`` the start of the server's answer (at most
    :attr:`body_limit` characters: a hostile server's 400 MB error page is
    not kept whole), ``.partial`` the text streamed before the failure.

    Example:
        >>> GenerationError("bad request", status_code=400, body="{}").status_code
        400
        >>> len(GenerationError("huge", body="x" * 10**6).body) < 17_000
        True
    """

    body_limit = 16 * 1024
    """The most characters of a server's answer an error keeps (and the most bytes of an error body read)."""

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
        self.body = body if len(body) <= self.body_limit else (
            f"{body[: self.body_limit]}… ({len(body) - self.body_limit:,} more characters not kept)")
        self.partial = partial


class ServerUnavailable(GenerationError, ConnectionError):
    """Nothing answers at the server's address, or the connection was lost.

    Example:
        >>> issubclass(ServerUnavailable, (GenerationError, ConnectionError))
        True
    """


class GenerationTimeout(GenerationError, TimeoutError):
    """A timeout ran out; ``.phase`` says which, ``.timeout`` its value (s).

    ``connect``: no connection within the connect timeout; ``read``: the
    server sent nothing for that long mid-reply (it looks hung); ``write``:
    the request could not be sent; ``pool``: no free connection; ``total``:
    the request's overall deadline passed although bytes kept arriving (a
    server that trickles keep-alive comments, or decodes for ever).

    Example:
        >>> e = GenerationTimeout("no connection within 10 s", phase="connect", timeout=10.0)
        >>> e.phase, isinstance(e, TimeoutError)
        ('connect', True)
    """

    def __init__(
        self, message: str, *, phase: TimeoutPhase, timeout: float | None = None, partial: str = ""
    ) -> None:
        super().__init__(message, partial=partial)
        self.phase: TimeoutPhase = phase
        self.timeout = timeout


class StreamProtocolError(GenerationError):
    """The server's answer is not a well-formed event stream.

    Not an event stream at all (another content type), an event that is not
    the JSON expected (kept in ``.body``), or a stream that ended before the
    server said it had finished.

    Example:
        >>> StreamProtocolError("malformed event", body="data: {").body
        'data: {'
    """


class SchemaMismatch(GenerationError, ValueError):
    """The reply is not the JSON asked for (not JSON, or against its schema).

    The raw reply is in ``.body``.

    Example:
        >>> issubclass(SchemaMismatch, (GenerationError, ValueError))
        True
    """


class ImagesNotSupported(GenerationError, ValueError):
    """An image for a model without a projector, or a server that takes none.

    A :class:`~rocm_nb.LocalModel` without ``mmproj=`` refuses before any
    request (``.status_code`` is ``None``); a server you ``connect()`` to
    refuses itself, and the message quotes what it said.

    Example:
        >>> issubclass(ImagesNotSupported, (GenerationError, ValueError))
        True
    """


class TextTooLong(GenerationError, ValueError):
    """A text longer than the embedding server's context; ``.index`` says which.

    Example:
        >>> TextTooLong("text 3 is too long", index=3).index
        3
    """

    def __init__(self, message: str, *, index: int, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.index = index


class ModelClosed(RocmNbError, RuntimeError):
    """The model (or client) was used after ``close()``.

    Example:
        >>> issubclass(ModelClosed, RuntimeError)
        True
    """


class ModelNotStarted(RocmNbError, RuntimeError):
    """What only a running server has (``base_url``, ``api_key``) was asked too early.

    Properties never start a server (that may take minutes): call
    ``model.start()``, or use ``with LocalModel(...) as model``, first.

    Example:
        >>> issubclass(ModelNotStarted, RuntimeError)
        True
    """


def _children(cls: type[BaseException]) -> list[type[BaseException]]:
    """The public subclasses of ``cls`` in this module, in the order defined (a private one is skipped over)."""
    found: list[type[BaseException]] = []
    for sub in cls.__subclasses__():
        if sub.__module__ == __name__:
            found += _children(sub) if sub.__name__.startswith("_") else [sub]
    return found


def _rows(cls: type[BaseException], indent: str, branch: str) -> Iterator[tuple[str, str]]:
    others = [base.__name__ for base in cls.__bases__ if not issubclass(base, RocmNbError)]
    name = cls.__name__ + (f" ({', '.join(others)})" if others and cls is not RocmNbError else "")
    summary = (cls.__doc__ or "").strip().splitlines()[0]
    yield indent + branch + name, re.sub(r"``([^`]*)``", r"\1", summary)
    children = _children(cls)
    below = indent + {"": "", "├── ": "│   ", "└── ": "    "}[branch]
    for i, child in enumerate(children):
        yield from _rows(child, below, "└── " if i == len(children) - 1 else "├── ")


def error_classes() -> list[type[RocmNbError]]:
    """``RocmNbError`` and every public exception under it, in the order :func:`error_tree` draws them.

    Example:
        >>> [cls.__name__ for cls in error_classes()][:3]
        ['RocmNbError', 'BinaryNotFound', 'BuildError']
    """
    def below(cls: type[BaseException]) -> Iterator[type[RocmNbError]]:
        for child in _children(cls):
            assert issubclass(child, RocmNbError)
            yield child
            yield from below(child)

    return [RocmNbError, *below(RocmNbError)]


def error_tree() -> str:
    """The tree of rocm_nb's exceptions, drawn from the classes: each with its other built-in base and summary.

    Every public exception class of this module is in it (a private base
    such as the process errors' is skipped over). The module docstring holds
    a copy, and the documentation's errors page is drawn by this function.

    Example:
        >>> print(error_tree().splitlines()[1])  # doctest: +NORMALIZE_WHITESPACE
        ├── BinaryNotFound (FileNotFoundError)  No usable llama-server was found (or the one named does not work).
    """
    rows = list(_rows(RocmNbError, "", ""))
    width = max(len(left) for left, _ in rows)
    return "\n".join(f"{left:<{width}}  {summary}".rstrip() for left, summary in rows)
