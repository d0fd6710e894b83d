"""``GpuMonitor``: a live widget with VRAM, GPU busy % and the llama-server process.

``model.monitor()`` (and ``%rocm_status``) shows, per GPU, a VRAM used/total
bar and a busy % bar (from :func:`rocm_nb.hardware.gpu_usage`: sysfs on AMD,
``nvidia-smi`` on NVIDIA), and a line for the llama-server process: its
resident memory and CPU %. Without a GPU the GPU section says so and the
process line, labelled "CPU stand-in", is what there is to watch.

It refreshes every ``interval`` seconds while the server is generating
(``llamacpp:requests_processing`` in ``/metrics``, so generations from the
chat panel, another notebook or any client count) and every
``idle_interval`` seconds otherwise. Sampling stops, leaving no thread
behind, when:

* every view of it is hidden: scrolled out of view, its output cleared, its
  tab in the background or closed;
* ``monitor.close()`` or ``monitor.stop()`` is called;
* its model is closed (the monitor registers ``stop`` as one of the model's
  close callbacks: the model knows nothing of its monitors).

Two decisions:

**A sampler thread, not an asyncio task.** The chat panel generates in an
asyncio task on the kernel's loop; a monitor cannot sample there, because a
cell that runs synchronously (``%%rocm_generate``, ``model.generate(...)``)
holds that loop for the whole generation, the very time the monitor should
be refreshing. Checked with a real ipykernel 7: a task updating a widget
every 0.3 s sent nothing during a 3 s ``time.sleep`` cell, while a thread
sent all its updates on time. So sampling runs in a daemon thread named
``rocm_nb-monitor`` that writes the widget's traits (which ipykernel sends
from any thread); stopping sets an event and joins it.

**Visibility reported by the view itself (anywidget).** The kernel cannot
tell whether an output is on screen, so the view (``static/monitor.js``, a
small ES module through `anywidget <https://anywidget.dev>`_, which works in
JupyterLab, Notebook 7, VS Code and Colab) reports it: an ``IntersectionObserver`` plus
``document.visibilitychange`` decide "visible"; the view sends
``{"event": "visible" | "hidden", "view": id}`` on every change and
"hidden" when it is removed. The thread runs only while at least one view
is visible. A view that vanishes without a word (the browser tab closed,
the page reloaded) is covered by a lease: visible views repeat "visible"
every ``lease / 3`` seconds and a view not heard from for ``lease`` seconds
is dropped, except while the server is generating, since a synchronous cell
delays those messages (the kernel reads them after the cell) and pausing
mid-generation would defeat the point. A late message simply resumes
sampling.

A monitor takes one sample when it is made (so that its text form, in a
terminal, says something); outside a front end nothing is displayed, so
nothing samples on its own after that: ``monitor.refresh()`` takes one more.

Example:
    >>> monitor = model.monitor(interval=0.5)  # doctest: +SKIP
    >>> monitor  # shows the widget; it refreshes while a generation runs  # doctest: +SKIP
    >>> monitor.refresh().process.rss  # doctest: +SKIP
    187416576
    >>> monitor.close()  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import importlib.resources
import math
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psutil

from rocm_nb._escape import printable
from rocm_nb._extras import needs_extra
from rocm_nb._units import human_bytes
from rocm_nb.errors import RocmNbError
from rocm_nb.hardware import GpuUsage, Hardware, gpu_usage
from rocm_nb.notebook._widget_kit import esm

with needs_extra("notebook"):
    import anywidget
    import traitlets

__all__ = ["GpuMonitor", "MonitorSample", "ProcessUsage", "Watched"]

THREAD_NAME = "rocm_nb-monitor"
"""Name of the sampling thread (one per monitor while it samples)."""


class Watched(Protocol):
    """What a :class:`GpuMonitor` watches: a llama-server's process, counters, hardware and lifetime.

    A :class:`~rocm_nb.model.LocalModel` is one.

    Example:
        >>> def watch(source: Watched) -> str:
        ...     return f"{source.label}: pid {source.pid}"
    """

    @property
    def pid(self) -> int | None:
        """The server's process id; ``None`` while no server runs."""
        ...

    @property
    def label(self) -> str:
        """The monitor's title: which model, on which backend."""
        ...

    @property
    def hardware(self) -> Hardware:
        """The machine's GPUs (what the GPU sampler reads)."""
        ...

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus counters (``/metrics``)."""
        ...

    def add_close_callback(self, fn: Callable[[], object]) -> None:
        """Call ``fn()`` once when the source closes (at once if it has)."""
        ...


@dataclass(frozen=True)
class ProcessUsage:
    """Memory and CPU use of the llama-server process.

    ``cpu_percent`` is since the previous sample, summed over cores (up to
    ``100 * cpu_count``).

    Example:
        >>> ProcessUsage(pid=1, rss=2**30, cpu_percent=150.0, cpu_count=2, memory_total=8 * 2**30).rss
        1073741824
    """

    pid: int
    rss: int
    cpu_percent: float
    cpu_count: int
    memory_total: int


@dataclass(frozen=True)
class MonitorSample:
    """One reading: the GPUs, the server process (``None`` when not running), generating or not.

    Example:
        >>> MonitorSample(gpus=(), process=None, generating=False, taken_at=0.0).gpus
        ()
    """

    gpus: tuple[GpuUsage, ...]
    process: ProcessUsage | None
    generating: bool
    taken_at: float


class _ProcessProbe:
    """Samples one process; keeps its ``psutil.Process`` so CPU % is measured between samples."""

    def __init__(self) -> None:
        self._process: psutil.Process | None = None

    def __call__(self, pid: int | None) -> ProcessUsage | None:
        if pid is None:
            self._process = None
            return None
        try:
            if self._process is None or self._process.pid != pid:
                self._process = psutil.Process(pid)
                self._process.cpu_percent(None)  # the baseline: the first reading is 0
            with self._process.oneshot():
                rss = self._process.memory_info().rss
                cpu = self._process.cpu_percent(None)
        except psutil.Error:
            self._process = None
            return None
        return ProcessUsage(pid, rss, cpu, psutil.cpu_count() or 1, psutil.virtual_memory().total)


def _bar(label: str, text: str, fraction: float | None) -> dict[str, Any]:
    return {"label": label, "text": text,
            "fraction": None if fraction is None else min(1.0, max(0.0, fraction))}


def _memory_bar(label: str, used: int | None, total: int | None) -> dict[str, Any]:
    """A bar of memory used against its total (``unknown`` when either is)."""
    if total and used is not None:
        return _bar(label, f"{human_bytes(used)} / {human_bytes(total)}", used / total)
    return _bar(label, "unknown", None)


def _stopped_note(source: Watched) -> str:
    """What the view says when no server runs: ``crashed`` as ``%rocm_status`` says it, else ``not running``."""
    from rocm_nb._lease import ModelState  # a LocalModel's; other sources have no state

    if getattr(source, "state", None) is ModelState.CRASHED:
        return "crashed: run %rocm_load again (or model.start()) for a fresh server"
    return "not running"


def _sections(sample: MonitorSample, *, running: bool, stopped: str = "not running") -> list[dict[str, Any]]:
    """What the view draws: titled groups of labelled bars (or a note, ``stopped`` when no server runs), GPUs first."""
    sections: list[dict[str, Any]] = []
    for gpu in sample.gpus:
        memory = [_memory_bar("carve-out" if gpu.gtt_total is not None else "VRAM", gpu.vram_used, gpu.vram_total)]
        if gpu.gtt_total is not None:  # an integrated GPU: the system RAM it maps beside its carve-out
            memory.append(_memory_bar("GTT", gpu.gtt_used, gpu.gtt_total))
        busy = (_bar("busy", "unknown", None) if gpu.busy_percent is None
                else _bar("busy", f"{gpu.busy_percent:.0f} %", gpu.busy_percent / 100))
        sections.append({"kind": "gpu", "title": f"GPU {gpu.index} · {gpu.name}", "bars": [*memory, busy],
                         "note": ""})
    if not sample.gpus:
        sections.append({"kind": "gpu", "title": "GPU", "bars": [],
                         "note": "no GPU found: llama-server runs on the CPU (process below)"})
    title = "llama-server" + ("" if sample.gpus else " · CPU stand-in")
    process = sample.process
    if process is None:
        sections.append({"kind": "process", "title": title, "bars": [],
                         "note": "running, but its process could not be read" if running else stopped})
    else:
        cpu_max = 100 * process.cpu_count
        sections.append({"kind": "process", "title": f"{title} · pid {process.pid}", "note": "", "bars": [
            _bar("RSS", f"{human_bytes(process.rss)} of {human_bytes(process.memory_total)} RAM",
                 process.rss / process.memory_total),
            _bar("CPU", f"{process.cpu_percent:.0f} % of {cpu_max} % ({process.cpu_count} cores)",
                 process.cpu_percent / cpu_max),
        ]})
    return sections


_STATIC = importlib.resources.files("rocm_nb.notebook") / "static"
"""The view's ES module and style sheet (``monitor.js``, ``monitor.css``), shipped as package data.

They are read as text, not handed to anywidget as paths: for a path anywidget
connects each widget to the file's change signal with a closure that holds the
widget, so no closed monitor would ever be freed.
"""


def _stop_on_close(monitor: weakref.ref[GpuMonitor]) -> None:
    """A source's close callback: weak, so that the source does not keep a closed monitor alive."""
    alive = monitor()
    if alive is not None:
        alive.stop("model closed")


class GpuMonitor(anywidget.AnyWidget):
    """A live view of a model's GPUs and server process; display it as the last line of a cell.

    Made by :meth:`LocalModel.monitor() <rocm_nb.model.LocalModel.monitor>`,
    or directly on anything :class:`Watched`.

    Args:
        source: what to watch: a :class:`~rocm_nb.model.LocalModel`; sampling
            stops for good when it closes.
        interval: seconds between samples while the server is generating.
        idle_interval: seconds between samples otherwise.
        gpus: the GPU sampler (default: :func:`~rocm_nb.hardware.gpu_usage`
            on the model's hardware); a seam for tests and other sources.
        lease: seconds a view counts as visible without hearing from it.
        clock: monotonic seconds, for leases and the idle pace (a seam for
            tests: a lease then runs out when the test says, not when a busy
            machine stalls the test).

    Example:
        >>> monitor = GpuMonitor(model, interval=0.5)  # doctest: +SKIP
        >>> monitor.refresh().generating  # doctest: +SKIP
        False
    """

    _esm = esm("monitor")
    _css = (_STATIC / "monitor.css").read_text(encoding="utf-8")

    title = traitlets.Unicode("").tag(sync=True)
    sections = traitlets.List(traitlets.Dict()).tag(sync=True)
    """What the view draws: per GPU a VRAM and a busy bar, then the server process."""
    status = traitlets.Unicode("").tag(sync=True)
    state = traitlets.Unicode("waiting").tag(sync=True)
    """``waiting`` (not shown yet), ``live``, ``paused`` (no view visible) or ``stopped``."""
    samples = traitlets.Int(0).tag(sync=True)
    """How many samples were taken."""
    heartbeat_s = traitlets.Float(10.0).tag(sync=True)

    def __init__(
        self,
        source: Watched,
        *,
        interval: float = 1.0,
        idle_interval: float = 5.0,
        gpus: Callable[[], Sequence[GpuUsage]] | None = None,
        lease: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()  # first: close() (also from __del__) needs it
        self._views: dict[str, float] = {}
        self._sampler: tuple[threading.Thread, threading.Event] | None = None
        self._stopped: str | None = None
        for name, value in (("interval", interval), ("idle_interval", idle_interval), ("lease", lease)):
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        super().__init__(title=source.label, heartbeat_s=lease / 3)
        self.interval = float(interval)
        self.idle_interval = max(float(idle_interval), self.interval)
        self.lease = float(lease)
        self._clock = clock
        self._source = source
        self._gpus = gpus if gpus is not None else lambda: gpu_usage(source.hardware)
        self._process = _ProcessProbe()
        self.last: MonitorSample | None = None
        """The latest :class:`MonitorSample` (``None`` before the first)."""
        self.wakeups = 0
        """How often the sampling thread has woken and decided whether to sample (it samples far less when idle)."""
        self.on_msg(self._on_view_message)
        try:
            self.refresh()  # something to show at once, in a terminal too
        except Exception as exc:  # shown in the widget, like a failure in the thread
            self._fail(exc, None)
        source.add_close_callback(functools.partial(_stop_on_close, weakref.ref(self)))

    # -- what the user has ------------------------------------------------------------------

    @property
    def sampling(self) -> bool:
        """True while the sampling thread runs.

        Example:
            >>> monitor.sampling  # doctest: +SKIP
            True
        """
        sampler = self._sampler
        return sampler is not None and sampler[0].is_alive()

    def refresh(self) -> MonitorSample:
        """Take one sample now and show it (whether or not a view is visible).

        Example:
            >>> monitor.refresh().gpus  # doctest: +SKIP
            ()
        """
        sample = self._take()
        with self._lock:
            self._show(sample)
        return sample

    def stop(self, reason: str = "stopped") -> None:
        """Stop sampling for good; the view keeps the last values and says why. Idempotent.

        Example:
            >>> monitor.stop()  # doctest: +SKIP
        """
        with self._lock:
            if self._stopped is None:
                self._stopped = reason
                self.state, self.status = "stopped", f"stopped: {reason}"
        self._halt()

    def close(self) -> None:
        """Stop sampling and close the widget (its views disappear). Idempotent.

        Example:
            >>> monitor.close()  # doctest: +SKIP
        """
        self.stop("closed")
        super().close()

    def __repr__(self) -> str:
        lines = [f"GpuMonitor: {self.title} ({self.state})"]
        for section in self.sections:
            lines.append(f"  {section['title']}" + (f": {section['note']}" if section["note"] else ""))
            lines += [f"    {bar['label']:<5} {bar['text']}" for bar in section["bars"]]
        return printable("\n".join(lines), lines=True)  # a file's and a GPU tool's names: escaped

    # -- views ------------------------------------------------------------------------------

    def _on_view_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict) or not isinstance(content.get("view"), str):
            return
        view, event = content["view"], content.get("event")
        with self._lock:
            if event == "visible":
                self._views[view] = self._clock()
            elif event == "hidden":
                self._views.pop(view, None)
            else:
                return
            nothing_visible = not self._views
            if not nothing_visible and self._stopped is None and not self.sampling:
                halt = threading.Event()
                thread = threading.Thread(target=self._run, args=(halt,), name=THREAD_NAME, daemon=True)
                self._sampler = (thread, halt)
                self.state, self.status = "live", "starting"
                thread.start()
        if nothing_visible:
            self._halt()

    def _halt(self) -> None:
        """Stop the sampling thread, if any, and wait for it."""
        with self._lock:
            sampler, self._sampler = self._sampler, None
            if sampler is not None:
                sampler[1].set()
                if self._stopped is None:
                    self.state, self.status = "paused", "paused: not visible"
        if sampler is not None and sampler[0] is not threading.current_thread():
            sampler[0].join(timeout=10)

    # -- sampling ---------------------------------------------------------------------------

    def _generating(self) -> bool:
        if self._source.pid is None:  # no server: nothing is generating, and nothing to ask
            return False
        try:
            return self._source.metrics().get("llamacpp:requests_processing", 0.0) > 0
        except RocmNbError:
            return False

    def _take(self, generating: bool | None = None) -> MonitorSample:
        gpus = tuple(self._gpus())
        process = self._process(self._source.pid)
        return MonitorSample(gpus, process, self._generating() if generating is None else generating, time.time())

    def _show(self, sample: MonitorSample) -> None:
        """Write a sample into the traits (the caller holds the lock)."""
        self.last = sample
        with self.hold_sync():
            self.sections = _sections(sample, running=self._source.pid is not None, stopped=_stopped_note(self._source))
            self.samples += 1
            if self._stopped is None:
                pace = (
                    "refreshes while shown" if self._sampler is None
                    else f"generating: every {self.interval:g} s" if sample.generating
                    else f"idle: every {self.idle_interval:g} s"
                )
                self.status = f"updated {time.strftime('%H:%M:%S', time.localtime(sample.taken_at))} · {pace}"

    def _run(self, halt: threading.Event) -> None:
        try:
            self._loop(halt)
        except Exception as exc:  # a background thread has no caller to raise to: show it
            self._fail(exc, halt)

    def _fail(self, exc: Exception, halt: threading.Event | None) -> None:
        """Stop for good after the sampler failed (in the thread ``halt`` belongs to, or at creation)."""
        with self._lock:
            if halt is None or (self._sampler is not None and self._sampler[1] is halt):
                self._sampler = None
                self._stopped = f"sampling failed ({type(exc).__name__}: {exc})"
                self.state, self.status = "stopped", f"stopped: {self._stopped}; make a new monitor"

    def _loop(self, halt: threading.Event) -> None:
        last = -math.inf
        while not halt.is_set():
            generating = self._generating()
            now = self._clock()
            with self._lock:
                if halt.is_set():
                    return
                if not generating:  # see the module docstring: leases do not expire mid-generation
                    for view, heard in list(self._views.items()):
                        if now - heard > self.lease:
                            del self._views[view]
                if not self._views:
                    self._sampler = None
                    self.state, self.status = "paused", "paused: not visible"
                    return
            if generating or now - last >= self.idle_interval:
                sample = self._take(generating)
                with self._lock:
                    if halt.is_set():
                        return
                    self._show(sample)
                last = now
            self.wakeups += 1
            halt.wait(self.interval)
