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
