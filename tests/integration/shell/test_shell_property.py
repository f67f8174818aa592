"""Property: any env value and any argv (text without NUL) arrive byte for byte through a real sshd."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ops import ssh

from .conftest import Agent

pytestmark = pytest.mark.integration

NO_SURROGATES: list[Literal["Cs"]] = ["Cs"]
# any text but NUL (cannot be in an argv or environ) and lone surrogates (not encodable)
TEXT = st.text(st.characters(exclude_categories=NO_SURROGATES, exclude_characters="\0"), max_size=40)
# bias towards the characters shells care about
SHELLY = st.text(st.sampled_from(list("'\"`$\\!;&|<>(){}[]*?~#= \t\n\r%-")) | st.characters(
    exclude_categories=NO_SURROGATES, exclude_characters="\0"), max_size=40)
VALUES = st.lists(TEXT | SHELLY, max_size=4)

PRINT_ALL = 'printf "%s\\0" START "$@"'


@pytest.fixture(scope="module")
def endpoint(shared_agent: Agent) -> Iterator[ssh.Endpoint]:
    """Reached once (container resolved, sshd awaited, pre-flight done); each example is one session."""
    yield ssh.reach(shared_agent.conf(), shared_agent.name, notice=lambda _: None)


def roundtrip(ep: ssh.Endpoint, args: list[str], values: list[str]) -> list[str]:
    env = {f"CAI_T{i}": value for i, value in enumerate(values)}
    script = PRINT_ALL + "".join(f' "$CAI_T{i}"' for i in range(len(values)))
    result = ssh.run_on(ep, ssh.command_script(argv=["bash", "-c", script, "argv0", *args], env=env),
                        capture=True)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert out.startswith("START\0") and out.endswith("\0"), repr(out)
    return out.split("\0")[1:-1]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=VALUES, values=VALUES)
@example(args=["it's", '"q"', "$HOME", "a b", "x\ny\n", "", "-n", "\\", "`id`", "!!"],
         values=["it's \"both\"", "$(id) ${PATH} $$", "  spaced  ", "line1\nline2\n", "", "=", "\t\r"])
def test_env_values_and_argv_arrive_byte_for_byte(endpoint: ssh.Endpoint, args: list[str],
                                                   values: list[str]) -> None:
    assert roundtrip(endpoint, args, values) == args + values
