"""The live GPU monitor: a timer that really stops, and real samples of the real server.

The monitor needs only the ``Watched`` protocol, so what it does with views,
leases, paces and threads is tested (unit tier) on a source with no server;
what it reads from a real llama-server is tested on the session's server.
The front end's part (an IntersectionObserver reporting "visible"/"hidden")
is played here by delivering the view's messages through the widget's comm,
as a kernel does; tests/test_browser.py checks the real view in JupyterLab.
GPU readings come from the recorded sysfs trees in tests/fixtures/hardware.
"""

from __future__ import annotations

import functools
import gc
import os
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import ipywidgets
import psutil
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from rocm_nb import GpuUsage, LocalModel, ModelClosed, gpu_usage
from rocm_nb.hardware import detect
from rocm_nb.modelfiles.catalog import DEFAULT_MODEL
from rocm_nb.notebook.monitor import THREAD_NAME, GpuMonitor, Watched
from tests.support.clock import FakeClock
from tests.support.processes import wait_until
from tests.support.sysfs import sysfs_root
from tests.support.widgets import from_view

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


class CountingGpus:
    """A GPU sampler that counts its calls (each sample calls it once)."""

    def __init__(self, source: Callable[[], Sequence[GpuUsage]] = list) -> None:
        self.source = source
        self.calls = 0

    def __call__(self) -> Sequence[GpuUsage]:
        self.calls += 1
        return self.source()


def show(monitor: GpuMonitor, view: str = "view-1") -> None:
    """What a view sends when it scrolls into sight (or repeats while it stays there)."""
    from_view(monitor, {"event": "visible", "view": view})


def hide(monitor: GpuMonitor, view: str = "view-1") -> None:
    """What a view sends when it leaves the screen or is removed."""
    from_view(monitor, {"event": "hidden", "view": view})


def sampler_threads() -> int:
    return sum(t.name == THREAD_NAME for t in threading.enumerate())


def assert_no_more_samples(monitor: GpuMonitor, gpus: CountingGpus) -> None:
    """Nothing samples any more: the sampling thread has ended, and only it (or ``refresh()``) samples.

    Proven by counting threads, not by sleeping to see that nothing moved: ``hide``,
    ``stop()`` and ``close()`` join the thread before they return (the wait only guards
    against a hang, for a thread that ends by itself when its lease runs out).
    """
    calls, samples = gpus.calls, monitor.samples
    assert not monitor.sampling
    wait_until(lambda: sampler_threads() == 0)
    assert (gpus.calls, monitor.samples) == (calls, samples), "the ending thread sampled once more"


@pytest.fixture
def monitors() -> Iterator[list[GpuMonitor]]:
    """Monitors made by a test, closed afterwards whatever happened."""
    made: list[GpuMonitor] = []
    yield made
    for monitor in made:
        monitor.close()
    assert sampler_threads() == 0


class FakeSource:
    """Something watched that is not a LocalModel and has no server: the monitor needs only the protocol."""

    pid: int | None = None
    label = "fake.gguf · backend cpu"
    hardware = detect(runner=lambda argv: None, environ={}, root=Path("/nonexistent"))

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], object]] = []

    def metrics(self) -> dict[str, float]:
        raise AssertionError("no server runs: the monitor must not ask for its metrics")

    def add_close_callback(self, fn: Callable[[], object]) -> None:
        self.callbacks.append(fn)

    def close(self) -> None:
        for fn in self.callbacks:
            fn()


class BusySource(FakeSource):
    """A source whose server (played by this process) says through its counters whether it is generating."""

    pid = os.getpid()

    def __init__(self) -> None:
        super().__init__()
        self.generating = False

    def metrics(self) -> dict[str, float]:
        return {"llamacpp:requests_processing": 1.0 if self.generating else 0.0}


def sampling(source: Watched, monitors: list[GpuMonitor]) -> tuple[GpuMonitor, CountingGpus]:
    """A fast monitor on ``source``, shown and seen sampling."""
    gpus = CountingGpus()
    monitor = GpuMonitor(source, interval=0.05, idle_interval=0.05, gpus=gpus)
    monitors.append(monitor)
    show(monitor)
    wait_until(lambda: gpus.calls >= 2)
    return monitor, gpus


def assert_stopped_for_good(monitor: GpuMonitor, gpus: CountingGpus, why: str) -> None:
    assert monitor.state == "stopped" and monitor.status == f"stopped: {why}"
    assert_no_more_samples(monitor, gpus)
    show(monitor)  # a late message from a view does not bring it back
    assert_no_more_samples(monitor, gpus)


# -- unit: views, leases, paces and threads, on a source with no server --------------------------------------------


@pytest.mark.unit
def test_samples_from_a_recorded_sysfs_tree_flow_into_the_widget(monitors: list[GpuMonitor], tmp_path: Path) -> None:
    root = sysfs_root(tmp_path, "sysfs-r9700-780m")
    hw = detect(runner=lambda argv: None, environ={}, root=root)
    monitor = GpuMonitor(FakeSource(), interval=0.05, idle_interval=0.05,
                         gpus=functools.partial(gpu_usage, hw, root=root))
    monitors.append(monitor)
    sample = monitor.refresh()
    assert [(u.index, u.vram_used, u.vram_total, u.busy_percent) for u in sample.gpus] == [
        (0, 29225381888, 34208743424, 3), (1, 72495104, 4294967296, 0),  # as rocm-smi reported them
    ]
    r9700, apu, process = monitor.sections
    assert r9700["title"] == f"GPU 0 · {hw.gpus[0].name}" and apu["title"] == f"GPU 1 · {hw.gpus[1].name}"
    assert r9700["bars"] == [
        {"label": "VRAM", "text": "27.2 GiB / 31.9 GiB", "fraction": pytest.approx(29225381888 / 34208743424)},
        {"label": "busy", "text": "3 %", "fraction": pytest.approx(0.03)},
    ]
    assert apu["bars"][0]["text"] == "69 MiB / 4.0 GiB"
    assert "CPU stand-in" not in process["title"]

    # the live timer reads the files again: new values reach the widget
    [device] = [d for d in (root / "sys/class/drm").glob("card*/device")
                if f"PCI_SLOT_NAME={hw.gpus[0].pci_slot}" in (d / "uevent").read_text()]
    (device / "gpu_busy_percent").write_text("87\n")
    (device / "mem_info_vram_used").write_text(f"{16 * 2**30}\n")
    show(monitor)
    wait_until(lambda: monitor.sections[0]["bars"][1]["text"] == "87 %")
    assert monitor.sections[0]["bars"][0]["text"] == "16.0 GiB / 31.9 GiB"
    assert monitor.last is not None and monitor.last.gpus[0].busy_percent == 87


@pytest.mark.unit
def test_samples_only_while_a_view_is_visible(monitors: list[GpuMonitor]) -> None:
    gpus = CountingGpus()
    monitor = GpuMonitor(FakeSource(), interval=0.05, idle_interval=0.05, gpus=gpus)
    monitors.append(monitor)
    assert gpus.calls == 1 and monitor.state == "waiting", "one sample on creation"
    assert not monitor.sampling and sampler_threads() == 0, "no sampling thread, so no sample, until shown"

    show(monitor, "a")
    wait_until(lambda: gpus.calls >= 3)
    assert monitor.sampling and monitor.state == "live" and sampler_threads() == 1
    show(monitor, "b")  # a second view of the same widget (the output shown twice)
    hide(monitor, "a")
    calls = gpus.calls
    wait_until(lambda: gpus.calls >= calls + 3)
    assert sampler_threads() == 1, "one thread whatever the number of views"

    hide(monitor, "b")  # the last visible view goes: scrolled away, output cleared, tab hidden
    assert monitor.state == "paused" and monitor.status == "paused: not visible"
    assert_no_more_samples(monitor, gpus)

    show(monitor, "b")  # scrolled back into view
    calls = gpus.calls
    wait_until(lambda: gpus.calls >= calls + 3)
    assert monitor.state == "live" and "idle: every 0.05 s" in monitor.status
    hide(monitor, "b")
    assert_no_more_samples(monitor, gpus)


@pytest.mark.unit
def test_close_stops_the_timer_for_good(monitors: list[GpuMonitor]) -> None:
    monitor, gpus = sampling(FakeSource(), monitors)
    monitor.close()
    assert_stopped_for_good(monitor, gpus, "closed")
    monitor.close()  # idempotent


def wakes(monitor: GpuMonitor, times: int) -> None:
    """Wait until the sampling thread has decided ``times`` more times: it has seen the clock as it is now."""
    woken = monitor.wakeups
    wait_until(lambda: monitor.wakeups >= woken + times or not monitor.sampling)


@pytest.mark.unit
def test_a_view_that_goes_silent_is_dropped_after_its_lease(monitors: list[GpuMonitor]) -> None:
    """A closed browser tab sends nothing: its view's lease runs out and sampling stops.

    The clock moves only when the test moves it, so a lease runs out exactly when the test says,
    however long a loaded machine takes between two steps.
    """
    clock, gpus = FakeClock(), CountingGpus()
    monitor = GpuMonitor(FakeSource(), interval=0.05, idle_interval=0.05, gpus=gpus, lease=0.5, clock=clock)
    monitors.append(monitor)
    assert monitor.heartbeat_s == pytest.approx(0.5 / 3), "the view repeats 'visible' three times a lease"
    show(monitor)
    for _ in range(4):  # a live view repeats itself: sampling goes on past the lease (1 s in all)
        clock.advance(0.25)  # (binary fractions: the sums are exact)
        show(monitor)
        wakes(monitor, 2)  # two wakeups: at least one whole decision made at this time
        assert monitor.sampling and monitor.state == "live"
    clock.advance(0.5)  # silent for exactly the lease: still counted as visible
    wakes(monitor, 2)
    assert monitor.sampling
    clock.advance(0.25)  # silent for longer than the lease: dropped
    wait_until(lambda: not monitor.sampling)
    assert monitor.state == "paused"
    assert_no_more_samples(monitor, gpus)
    show(monitor)  # a late message (the kernel was busy) resumes it
    wait_until(lambda: monitor.sampling)


@pytest.mark.unit
def test_a_generating_server_keeps_its_views_and_is_sampled_fast() -> None:
    """Fast while the server generates, slow when idle; and no lease runs out mid-generation.

    A synchronous cell holds the kernel while it generates, so the views' repeats arrive late:
    the monitor must not pause then.
    """
    clock, gpus, source = FakeClock(), CountingGpus(), BusySource()
    monitor = GpuMonitor(source, interval=0.05, idle_interval=60, gpus=gpus, lease=0.5, clock=clock)
    try:
        show(monitor)
        wakes(monitor, 4)
        assert monitor.samples == 2, "idle: the creation's sample and the first shown one, the next a minute later"
        assert monitor.last is not None and not monitor.last.generating

        source.generating = True
        wakes(monitor, 2)  # the thread has seen it generating
        clock.advance(5.0)  # ten leases without a word from the view: it is not dropped
        samples = monitor.samples
        wait_until(lambda: monitor.samples >= samples + 3)  # one a wakeup, the clock standing still
        assert monitor.sampling and monitor.last is not None and monitor.last.generating
        assert "generating: every 0.05 s" in monitor.status

        source.generating = False  # the generation ended: now the silent view's lease counts again
        wait_until(lambda: not monitor.sampling)
        assert monitor.state == "paused"
    finally:
        monitor.close()
    assert sampler_threads() == 0


@pytest.mark.unit
def test_a_failing_sampler_stops_and_says_why(monitors: list[GpuMonitor]) -> None:
    def broken() -> list[GpuUsage]:
        raise OSError("sysfs went away")

    at_once = GpuMonitor(FakeSource(), gpus=broken)
    monitors.append(at_once)
    assert at_once.state == "stopped" and "sampling failed (OSError: sysfs went away)" in at_once.status
    show(at_once)
    assert not at_once.sampling

    calls: list[int] = []

    def works_once() -> list[GpuUsage]:
        calls.append(1)
        return [] if len(calls) == 1 else broken()

    monitor = GpuMonitor(FakeSource(), interval=0.05, gpus=works_once)
    monitors.append(monitor)
    assert monitor.state == "waiting" and len(calls) == 1
    show(monitor)
    wait_until(lambda: monitor.state == "stopped")
    assert "sampling failed (OSError: sysfs went away)" in monitor.status and len(calls) == 2
    assert not monitor.sampling and sampler_threads() == 0


@pytest.mark.unit
def test_bad_intervals_are_refused() -> None:
    with pytest.raises(ValueError, match="interval must be a positive number of seconds"):
        GpuMonitor(FakeSource(), interval=0)
    with pytest.raises(ValueError, match="lease"):
        GpuMonitor(FakeSource(), lease=-1)


@pytest.mark.unit
def test_importing_rocm_nb_does_not_import_the_widget_libraries() -> None:
    code = ("import sys, rocm_nb; print(sorted({'anywidget', 'ipywidgets'} & set(sys.modules)));"
            "import rocm_nb.notebook.monitor; print(rocm_nb.GpuMonitor is rocm_nb.notebook.monitor.GpuMonitor)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["[]", "True"], "the widget names load on first use"


@pytest.mark.unit
def test_a_monitor_stops_through_the_close_callback_it_registered(monitors: list[GpuMonitor]) -> None:
    source = FakeSource()
    gpus = CountingGpus()
    monitor = GpuMonitor(source, interval=0.05, idle_interval=0.05, gpus=gpus)
    monitors.append(monitor)
    assert monitor.title == "fake.gguf · backend cpu" and len(source.callbacks) == 1
    assert monitor.sections[-1]["note"] == "not running"
    show(monitor)
    wait_until(lambda: gpus.calls >= 3)
    source.close()
    assert monitor.state == "stopped" and monitor.status == "stopped: model closed"
    assert not monitor.sampling and sampler_threads() == 0


@pytest.mark.unit
def test_a_closed_source_stops_a_new_monitor_at_once_and_keeps_no_closed_one_alive() -> None:
    source = FakeSource()
    source.close()
    source.add_close_callback = lambda fn: fn()  # type: ignore[method-assign]  # closed: runs at once
    late = GpuMonitor(source, gpus=list)
    assert late.state == "stopped" and late.status == "stopped: model closed"
    late.close()

    watching = FakeSource()
    monitor = GpuMonitor(watching, gpus=list)
    gone_when_closed = weakref.ref(monitor)
    monitor.close()
    del monitor
    gc.collect()
    assert gone_when_closed() is None, "the source's callback holds its monitor weakly"
    watching.close()  # the callback of a monitor that is gone does nothing


# -- server: what the monitor reads from the real llama-server -----------------------------------------------------


@pytest.mark.server
def test_the_process_line_shows_the_real_servers_memory(model: LocalModel, monitors: list[GpuMonitor]) -> None:
    monitor = model.monitor()
    monitors.append(monitor)
    assert monitor.samples == 1 and monitor.last is not None, "one sample on creation, for the text form"
    sample = monitor.refresh()
    assert sample is monitor.last and sample.process is not None and model.pid is not None
    real = psutil.Process(model.pid).memory_info().rss
    assert sample.process.pid == model.pid
    assert sample.process.rss > 20 * 2**20, "the 98 MB model is loaded into the server"
    assert abs(sample.process.rss - real) < 0.1 * real
    assert sample.process.memory_total == psutil.virtual_memory().total
    assert sample.generating is False and monitor.samples == 2

    gpu, process = monitor.sections
    assert not model.hardware.gpus, "this machine has no GPU: the CPU stand-in is what shows"
    assert gpu["bars"] == [] and "no GPU found" in gpu["note"]
    assert process["title"] == f"llama-server · CPU stand-in · pid {model.pid}"
    rss, cpu = process["bars"]
    assert rss["label"] == "RSS" and f"{sample.process.rss / 2**20:.0f} MiB" in rss["text"]
    assert rss["fraction"] == pytest.approx(sample.process.rss / sample.process.memory_total)
    assert cpu["label"] == "CPU" and f"of {100 * psutil.cpu_count()} %" in cpu["text"]
    assert "CPU stand-in" in repr(monitor) and "RSS" in repr(monitor)
    assert "refreshes while shown" in monitor.status and monitor.state == "waiting"


@pytest.mark.server
def test_a_real_generation_counts_as_generating(model: LocalModel, monitors: list[GpuMonitor]) -> None:
    """The server's own counter (``requests_processing``) is what tells the monitor; any client's request counts."""
    monitor = model.monitor(gpus=list)
    monitors.append(monitor)
    wait_until(lambda: not monitor.refresh().generating, timeout=30)  # what earlier tests cancelled has ended
    # the grammar allows no end before 2000 letters: the server is still decoding when the first piece arrives
    with model.stream("Write letters:", max_tokens=2000, temperature=0.0, grammar="root ::= [a-z]{2000}") as stream:
        next(iter(stream))
        assert monitor.refresh().generating


@pytest.mark.server
def test_closing_the_model_stops_its_monitors(model: LocalModel, monitors: list[GpuMonitor]) -> None:
    # an equal configuration attaches to the session's server: closing it leaves that server running
    other = LocalModel(DEFAULT_MODEL, ctx_size=model.config.ctx_size, parallel=model.config.parallel).start()
    assert other.pid == model.pid
    monitor, gpus = sampling(other, monitors)
    other.close()
    assert_stopped_for_good(monitor, gpus, "model closed")
    with pytest.raises(ModelClosed, match="was closed"):
        other.monitor()
    assert model.health(), "the shared server still runs for its other user"


@pytest.mark.server
def test_rocm_status_shows_the_monitor_and_rocm_stop_stops_it(model: LocalModel) -> None:
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "rocm_nb")
    with capture_output():  # the same config as the session fixture: attaches to its server
        shell.run_line_magic("rocm_load", f"{model.path} --ctx 4096 --parallel 2 --alias watched")
    with capture_output() as out:
        shell.run_line_magic("rocm_status", "")
    table, widget = out.outputs
    assert "watched" in table.data["text/plain"]
    [monitor] = [w for w in ipywidgets.widgets.widget._instances.values()
                 if w.model_id == widget.data[WIDGET_VIEW]["model_id"]]
    assert isinstance(monitor, GpuMonitor)
    assert f"pid {model.pid}" in widget.data["text/plain"] and "RSS" in widget.data["text/plain"]
    show(monitor)
    wait_until(lambda: monitor.sampling)
    with capture_output():
        shell.run_line_magic("rocm_stop", "watched")
    assert monitor.status == "stopped: model closed" and not monitor.sampling and sampler_threads() == 0
    monitor.close()
