"""Helpers shared by the test modules.

``tests/conftest.py`` keeps fixtures only; what test modules share besides
fixtures lives here, one small module per kind of thing:

* :mod:`tests.support.processes`: polling and process checks;
* :mod:`tests.support.gguf_files`: real GGUF files and Hugging Face caches written for a test;
* :mod:`tests.support.sysfs`: the recorded hardware trees in ``tests/fixtures/hardware``;
* :mod:`tests.support.decoding`: what greedy decoding and cancellation may be expected to do;
* :mod:`tests.support.sockets`: raw HTTP over a socket, for servers written in a test;
* :mod:`tests.support.jupyter`: a Jupyter server and a Chromium page of the test's own (browser tests);
* :mod:`tests.support.widgets`: counting the messages a widget sends to the browser;
* :mod:`tests.support.vision`: a tiny vision model (the default model and a projector of random weights).
"""
