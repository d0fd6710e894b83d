"""The public API's types say what it takes: the protocols accept the real classes, and no hook hides in it.

mypy --strict checks rocm_nb itself (``make lint``); this checks what a user's
code type-checks against: a LocalModel, a Client and a LocalRouter passed
where the protocols stand.
"""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pytest
from mypy import api

from rocm_nb import Client

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]

USER_CODE = '''
from rocm_nb import Client, LocalModel, LocalRouter
from rocm_nb.client.tool_loop import ToolChat, run_tools
from rocm_nb.notebook._widget_kit import TokenSource
from rocm_nb.notebook.chat import ChatSource

def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b

def use(model: LocalModel, client: Client, router: LocalRouter) -> None:
    for source in (model, client, router):
        tools: ToolChat = source
        tokens: TokenSource = source
        chat: ChatSource = source
    run_tools(model, [{"role": "user", "content": "6 * 7?"}], [multiply], temperature=0.0, tool_choice="required")
    model.run_tools([{"role": "user", "content": "6 * 7?"}], [multiply], mode="json", max_tokens=64)
'''

MISTAKES = '''
from rocm_nb import LocalModel
from rocm_nb.client.tool_loop import run_tools

def use(model: LocalModel) -> None:
    run_tools(model, [], [print], temprature=0.5)
'''


def mypy(code: str, tmp_path: Path) -> tuple[str, int]:
    source = tmp_path / "user_code.py"
    source.write_text(textwrap.dedent(code))
    out, err, status = api.run(["--strict", "--no-error-summary", "--cache-dir", str(ROOT / ".mypy_cache"),
                                str(source)])
    return out + err, status


def test_the_real_classes_are_the_protocols_the_api_takes(tmp_path: Path) -> None:
    out, status = mypy(USER_CODE, tmp_path)
    assert status == 0, out


def test_a_misspelt_option_to_run_tools_is_a_type_error(tmp_path: Path) -> None:
    out, status = mypy(MISTAKES, tmp_path)
    assert status == 1 and 'Unexpected keyword argument "temprature"' in out, out


def test_the_clients_failure_hook_is_not_public() -> None:
    public = [name for name in inspect.signature(Client).parameters if not name.startswith("_")]
    assert "on_failure" not in public and "_on_failure" in inspect.signature(Client).parameters
