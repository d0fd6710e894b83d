"""The notebook layer: magics, displays and widgets, each a thin view over the Python API.

Nothing here holds logic of its own: :mod:`~rocm_nb.notebook.magics` (the
``%rocm_*`` magics), :mod:`~rocm_nb.notebook.display` (tokens streamed into
one cell output), :mod:`~rocm_nb.notebook.chat` (the chat panel),
:mod:`~rocm_nb.notebook.monitor` (the GPU monitor) and the teaching widgets
(:mod:`~rocm_nb.notebook.reply_view`, :mod:`~rocm_nb.notebook.explore`,
:mod:`~rocm_nb.notebook.playground`, :mod:`~rocm_nb.notebook.token_view`)
call :class:`~rocm_nb.LocalModel` or :class:`~rocm_nb.Client`. IPython,
ipywidgets and anywidget are imported by these modules, never by
``import rocm_nb``: they need the ``notebook`` extra.

Example:
    >>> from rocm_nb.notebook.display import LONG_PROMPT  # prompts this long get a progress bar
    >>> LONG_PROMPT
    256
"""
