"""The rollback copy of an update describes itself (its manifest) and a copy left by an interrupted run is
judged from it: the pure parsers, the refusal line and doctor's ``update.rollback-left``."""

from __future__ import annotations

import pytest

from ops.config import CaiConfig
from ops.update import rollback as rb

pytestmark = pytest.mark.unit

CONF = CaiConfig.from_mapping({})
#: The manifest a backup wrote on a lab host (systemd 252) before a dockerd bundle and unit update.
MANIFEST = """created 2026-12-02T05:58:01Z
engine 0b5f3c1e9d2a4c7f8e6b1a2d3c4e5f60
version 27.3.1
file 0 /opt/containai/libexec/containai-guard
file 1 /etc/containai/docker/daemon.json
file 2 /etc/systemd/system/containai-docker.service
"""


def test_manifest_names_every_kept_file_in_order() -> None:
    left = rb.parse_manifest(MANIFEST)
    assert left == rb.Left("2026-12-02T05:58:01Z", "0b5f3c1e9d2a4c7f8e6b1a2d3c4e5f60", "27.3.1",
                           ("/opt/containai/libexec/containai-guard", "/etc/containai/docker/daemon.json",
                            "/etc/systemd/system/containai-docker.service"))


def test_manifest_of_an_engine_that_did_not_run_and_no_bundle() -> None:
    left = rb.parse_manifest("created 2026-12-02T05:58:01Z\nengine \nfile 0 /etc/x\n")
    assert (left.engine_invocation, left.new_version, left.files, left.complete) == ("", None, ("/etc/x",), True)


@pytest.mark.parametrize("text", ["", "file 0 /etc/x\n", "created 2026-12-02T05:58:01Z\nfile 1 /etc/x\n"])
def test_a_copy_without_a_whole_manifest_is_incomplete(text: str) -> None:
    assert not rb.parse_manifest(text).complete


def test_the_probe_tells_no_copy_from_a_copy_without_a_manifest() -> None:
    assert rb.parse_left("") is None
    bare = rb.parse_left("@@CAI-ROLLBACK-COPY\n")
    assert bare is not None and not bare.complete
    full = rb.parse_left("@@CAI-ROLLBACK-COPY\n" + MANIFEST)
    assert full is not None and full.complete and full.created == "2026-12-02T05:58:01Z"


def test_the_refusal_is_one_line_naming_the_host_and_when() -> None:
    line = rb.left_message("lima:containai-docker", "2026-12-02T05:58:01Z", CONF).line()
    assert line.startswith("a rollback copy of an interrupted update exists on lima:containai-docker "
                           "(from 2026-12-02T05:58:01Z): run inv update --resume: ")
    assert "\n" not in line


def test_doctor_reports_a_left_copy_with_the_resume_hint() -> None:
    assert rb.left_findings("", CONF, "local", "linux") == []
    (finding,) = rb.left_findings("@@CAI-ROLLBACK-COPY\n" + MANIFEST, CONF, "local", "linux")
    assert finding.code == "update.rollback-left" and finding.severity == "warning"
    assert finding.hint.startswith("inv update --resume")
    assert "/var/lib/containai-ops/rollback" in finding.message and "2026-12-02T05:58:01Z" in finding.message
    assert finding.data["files"][2] == "/etc/systemd/system/containai-docker.service"
