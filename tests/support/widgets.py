"""Counting what a widget sends to the browser (tests and ``benchmarks/widget_rate.py``)."""

from __future__ import annotations

from typing import Any


def counted(widget: Any) -> list[int]:
    """A one-item list that counts the messages ``widget``'s comm publishes from now on.

    Outside a kernel the comm is ipywidgets' ``DummyComm``; its ``publish_msg``
    is what a kernel's comm sends on iopub, one call per message.
    """
    sent = [0]
    publish = widget.comm.publish_msg

    def counting(*args: Any, **kwargs: Any) -> Any:
        sent[0] += 1
        return publish(*args, **kwargs)

    widget.comm.publish_msg = counting
    return sent


def from_view(widget: Any, content: dict[str, Any]) -> None:
    """Deliver ``content`` to ``widget`` as a message from one of its views, the way a kernel does.

    A view's ``model.send(content)`` reaches the kernel as a comm message whose
    data is ``{"method": "custom", "content": content}``; the kernel hands it to
    the widget's comm, whose callback is ipywidgets' own dispatch, which calls
    the widget's ``on_msg`` handlers. Outside a kernel the comm is a
    ``DummyComm``, and this is that same path. A closed widget has no comm, and
    a kernel drops messages for a comm it no longer has: so does this.
    """
    if widget.comm is None:
        return
    widget.comm.handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})
