"""Unit tests of ops.ssh: option building, env parsing, remote program building and report parsing."""

from __future__ import annotations

import base64
import re
import shlex
from pathlib import Path

import pytest

from ops import ssh
from ops.errors import ConfigError, NotFoundError

pytestmark = pytest.mark.unit

EP = ssh.Endpoint(container="agent-1", port=2299, user="agent", key=Path("/k/id"), known_hosts=Path("/k/kh"))

# stderr of OpenSSH 9.2 (Debian 12) for the cases the pre-flight probe classifies
HOSTKEY_CHANGED = """@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Offending ED25519 key in /tmp/kh:1
  remove with:
  ssh-keygen -f "/tmp/kh" -R "[127.0.0.1]:22991"
Host key for [127.0.0.1]:22991 has changed and you have requested strict checking.
Host key verification failed.
"""


def test_options_are_explicit_and_ignore_user_config() -> None:
    argv = ssh.ssh_argv(EP, "true", batch=True)
    joined = " ".join(argv)
    assert argv[:3] == ["ssh", "-F", "/dev/null"]
    for option in ("StrictHostKeyChecking=accept-new", "UserKnownHostsFile=/k/kh",
                   "GlobalKnownHostsFile=/dev/null", "IdentitiesOnly=yes", "HashKnownHosts=no",
                   "BatchMode=yes"):
        assert f"-o {option}" in joined
    assert "-i /k/id" in joined and "-p 2299" in joined and "-l agent" in joined
    assert argv[-2:] == ["127.0.0.1", "true"]
    assert "-T" in argv and "-tt" not in argv


def test_shell_forces_a_tty_and_runs_the_login_shell() -> None:
    argv = ssh.shell_argv(EP)
    assert "-tt" in argv
    assert argv[-1] == "127.0.0.1"
    assert "BatchMode=yes" not in " ".join(argv)


def test_known_hosts_entry_is_exact() -> None:
    assert EP.known_hosts_entry == "[127.0.0.1]:2299"


def test_env_pairs_keep_everything_after_the_first_equals() -> None:
    assert ssh.parse_env_pairs(["A=b=c", "EMPTY=", "NL=x\ny"]) == {"A": "b=c", "EMPTY": "", "NL": "x\ny"}
    assert ssh.parse_env_pairs(None) == {}


@pytest.mark.parametrize("pair", ["NOVALUE", "1A=x", "A-B=x", "=x", "A B=x"])
def test_bad_env_pairs_are_refused(pair: str) -> None:
    with pytest.raises(ConfigError):
        ssh.parse_env_pairs([pair])


def test_nul_cannot_travel() -> None:
    with pytest.raises(ConfigError):
        ssh.command_script(command="true", env={"A": "x\0y"})
    with pytest.raises(ConfigError):
        ssh.command_script(command="a\0b")


def test_script_exports_then_runs_the_command() -> None:
    script = ssh.command_script(command="echo $FOO", env={"FOO": "it's $HOME"})
    assert script.splitlines() == ["export FOO='it'\"'\"'s $HOME'", "echo $FOO"]


def test_argv_is_quoted_word_by_word() -> None:
    script = ssh.command_script(argv=["printf", "%s\n", "a b", "$X", "'"])
    assert shlex.split(script) == ["printf", "%s\n", "a b", "$X", "'"]


def test_command_xor_argv() -> None:
    with pytest.raises(ConfigError):
        ssh.command_script()
    with pytest.raises(ConfigError):
        ssh.command_script(command="x", argv=["x"])
    with pytest.raises(ConfigError):
        ssh.command_script(argv=[])


def test_remote_blob_shows_the_login_shell_only_base64() -> None:
    program = "echo 'quoted' \"$HOME\"\nnewline; `tick` !bang"
    line = ssh.remote_blob(program)
    match = re.fullmatch(r"exec bash -c 'eval \"\$\(printf %s ([A-Za-z0-9+/=]+) \| base64 -d\)\"'", line)
    assert match is not None
    assert base64.b64decode(match.group(1)).decode() == program
    assert "\n" not in line


def test_foreground_program_uses_a_login_bash() -> None:
    assert ssh.foreground_program("exit 7") == "exec bash -lc 'exit 7'"


def test_log_name_is_timestamp_and_id() -> None:
    assert ssh.log_name(0, "abcd1234") == "19700101T000000Z-abcd1234.log"
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}\.log", ssh.log_name())


def test_detach_program_detaches_all_three_fds_and_keeps_a_status_file() -> None:
    program = ssh.detach_program("sleep 600", "x.log", settle=0.5)
    assert 'log="$log_dir/x.log"' in program
    assert "nohup bash -c" in program and "set -- setsid" in program
    assert '</dev/null >"$log" 2>&1 &' in program
    assert '"$2.status"' in program
    assert "kill -0" in program
    assert "while [ \"$i\" -lt 10 ]" in program
    assert '$HOME/.containai/logs' in program


def test_parse_detach_report_alive() -> None:
    report = ssh.parse_detach_report("motd noise\nCAI-LOG /home/agent/.containai/logs/x.log\nCAI-PID 4242\n")
    assert report == ssh.DetachReport(log_path="/home/agent/.containai/logs/x.log", pid=4242)


def test_parse_detach_report_failed_with_tail() -> None:
    text = "CAI-LOG /h/x.log\nCAI-EXIT 127\nCAI-TAIL\nbash: line 1: no-such-program: command not found\n"
    report = ssh.parse_detach_report(text)
    assert report.pid is None and report.ended and report.status == 127
    assert report.tail == "bash: line 1: no-such-program: command not found"


def test_parse_detach_report_unknown_status_and_error() -> None:
    report = ssh.parse_detach_report("CAI-LOG /h/x.log\nCAI-EXIT unknown\nCAI-TAIL\n")
    assert report.ended and report.status is None
    assert ssh.parse_detach_report("CAI-ERROR cannot create /h/.containai/logs\n").error.startswith("cannot")
    assert ssh.parse_detach_report("") == ssh.DetachReport()


@pytest.mark.parametrize(
    ("stderr", "kind"),
    [
        (HOSTKEY_CHANGED, "hostkey-changed"),
        ("Host key verification failed.\n", "hostkey"),
        ("agent@127.0.0.1: Permission denied (publickey).\n", "auth"),
        ("ssh: connect to host 127.0.0.1 port 2299: Connection refused\n", "refused"),
        ("kex_exchange_identification: read: Connection reset by peer\n", "refused"),
        ("ssh: connect to host 127.0.0.1 port 2299: Connection timed out\n", "timeout"),
        ("Load key \"/k/id\": invalid format\n", "key-unreadable"),
        ("@ WARNING: UNPROTECTED PRIVATE KEY FILE! @\n", "key-perms"),
        ("something else\n", "other"),
    ],
)
def test_classify_probe_failure(stderr: str, kind: str) -> None:
    assert ssh.classify_probe_failure(stderr) == kind


def test_choose_running() -> None:
    assert ssh.choose_running(["a"], ["b"]) == "a"
    with pytest.raises(NotFoundError, match="no managed container is running .stopped: b"):
        ssh.choose_running([], ["b"])
    with pytest.raises(ConfigError, match="2 managed containers are running: a, c"):
        ssh.choose_running(["a", "c"], [])


def test_transport_errors_have_their_own_exit_code() -> None:
    assert ssh.SshTransportError("x").exit_code == ssh.TRANSPORT_EXIT == 3


def test_last_line() -> None:
    assert ssh.last_line("a\n\n b \n\n") == "b"
    assert ssh.last_line("") == ""
