"""The benchmark scripts still run end to end (tiny data, one repetition); no timing is asserted.

``python -m bench --smoke`` runs every scenario against a real gateway, Orthanc and storescp
with a handful of instances, so a change to the gateway, the harness or a peer that breaks a
benchmark shows up in CI instead of on the day someone wants numbers. The result document and
the page rendered from it must be well formed; whether targets are met is not checked here.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.report import render
from bench.scenarios import OPTIONAL, all_scenarios
from tests.harness import require_binary, require_file
from tests.harness.orthanc import ORTHANC_BINARY, ORTHANC_DICOMWEB_PLUGIN

pytestmark = [pytest.mark.dcmtk, pytest.mark.orthanc]

ROOT = Path(__file__).resolve().parents[2]


def test_every_scenario_runs_on_tiny_data_and_reports(tmp_path: Path) -> None:
    require_binary("storescu")
    require_binary("storescp")
    require_file(ORTHANC_BINARY, "Orthanc")
    require_file(ORTHANC_DICOMWEB_PLUGIN, "Orthanc DICOMweb plugin")
    output = tmp_path / "results.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--smoke",
            "--data",
            str(tmp_path / "data"),
            "--output",
            str(output),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    document = json.loads(output.read_text())
    assert document["profile"] == "smoke"
    assert document["repeat"] == 1
    assert document["machine"]["cores"] >= 1
    for key in ("python", "pydicom", "pynetdicom", "orthanc", "dcmtk"):
        assert document["versions"][key], key
    assert "-m bench --smoke" in document["command"]

    expected = {s.name for s in all_scenarios()} - OPTIONAL  # qido-100k: same code as 2k
    results = {s["name"]: s for s in document["scenarios"]}
    assert set(results) == expected
    for name, result in results.items():
        declared = {m["key"] for m in result["metrics"]}
        for system in result["systems"]:
            status = result["status"][system]
            # "skipped" is allowed: an endpoint the gateway does not offer yet (404/501).
            assert status in ("ok", "skipped"), (name, system, result.get("notes"))
            if status == "ok":
                median = result["median"][system]
                measured = declared & set(median)
                assert measured, (name, system)
                assert all(math.isfinite(median[k]) and median[k] >= 0 for k in measured)
        if all(result["status"][s] == "ok" for s in ("gateway", "orthanc")):
            assert result["ratios"]["orthanc"], name

    targets = document["targets"]
    assert targets and all(t["met"] in (True, False, None) for t in targets)
    page = render(document, analysis="analysis goes here")
    assert page.startswith("# Benchmarks")
    for name in expected:
        assert f"### {name}:" in page
    assert "## Targets (issue 7)" in page and "analysis goes here" in page


def test_profile_groups_sampled_stacks_by_cost() -> None:
    """bench.profile's reading of py-spy's raw format, without py-spy or a gateway."""
    from bench.profile import classify, parse_raw, summarise_samples, thread_role

    raw = (
        "thread (11): AcceptorThread@1;Thread.run (threading.py:982);"
        "Association._run_reactor (pynetdicom/association.py:714);"
        "DimseHandlers.on_store (gateway/dimse/handlers.py:10);"
        "check_structure (gateway/dicom/structure.py:5) 7\n"
        "thread (12): Thread-8 (run_reactor);DULServiceProvider.run_reactor "
        "(pynetdicom/dul.py:400) 3\n"
        "not a sample line\n"
    )
    samples = parse_raw(raw)
    assert [(count, len(frames)) for _, frames, count in samples] == [(7, 4), (3, 1)]
    (thread, frames, _), (dul_thread, dul_frames, _) = samples
    assert classify(frames) == ("gateway handler", "structure walk (completeness check)")
    assert thread_role(thread, frames) == "association"
    assert thread_role(dul_thread, dul_frames) == "dul"
    tally = summarise_samples(samples, view="association")
    assert tally.total == 7
    assert tally.share(("gateway handler", "structure walk (completeness check)")) == 1.0
