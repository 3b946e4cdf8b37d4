"""Self-tests of the real-peer harness: if these fail, no end-to-end result can be trusted."""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import textwrap
from pathlib import Path

import httpx
import pydicom
import pytest
import yaml

from tests.harness import (
    LOOPBACK,
    GatewayProcess,
    ManagedProcess,
    OrthancServer,
    ProcessDiedError,
    StoreSCP,
    dataset_bytes,
    dcmdump,
    echoscu,
    free_port,
    make_ct_series,
    make_multiframe,
    make_tiny_instances,
    pydicom_storage_files,
    require_binary,
    same_content,
    storescu,
    stow,
    wait_for_port,
    wait_until,
    write_config,
)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- process -------------------------------------------------------------------------------


def test_managed_process_stop_kills_the_whole_group(tmp_path: Path) -> None:
    # A shell that forks a grandchild: stop() must take both down, not orphan the sleep.
    script = "sleep 60 & echo child=$!; wait"
    proc = ManagedProcess(["sh", "-c", script], workdir=tmp_path, name="tree").start()
    # The log's first line is the start marker quoting the script, hence the anchored match.
    found = wait_until(lambda: re.search(r"^child=(\d+)$", proc.log_text(), re.M), timeout=5)
    assert found is not None
    child = int(found.group(1))
    assert proc.alive
    assert proc.stop(timeout=5) == -signal.SIGTERM
    assert not proc.alive
    assert _gone(proc.pid)
    wait_until(lambda: _gone(child), timeout=5, message="grandchild to die")
    assert proc.stop() == -signal.SIGTERM  # idempotent, signals nothing


def test_managed_process_kill_and_log(tmp_path: Path) -> None:
    port = free_port()
    server = [sys.executable, "-c", _TCP_SERVER, str(port)]
    with ManagedProcess(server, workdir=tmp_path, name="srv") as proc:
        wait_for_port(port, 10, process=proc)
        assert "listening" in proc.log_text()
        assert proc.kill() == -signal.SIGKILL
    assert (tmp_path / "srv.log").exists()


_TCP_SERVER = textwrap.dedent(
    """
    import socket, sys, time
    s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
    print("listening", flush=True)
    time.sleep(60)
    """
)


def test_require_binary_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    assert require_binary("sh").endswith("/sh")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_binary("no-such-program-harness")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="refusing to skip"):
        require_binary("no-such-program-harness")


def test_free_port_never_repeats() -> None:
    ports = {free_port() for _ in range(50)}
    assert len(ports) == 50


# -- data ----------------------------------------------------------------------------------


def test_ct_series_is_deterministic_and_valid(tmp_path: Path) -> None:
    first = make_ct_series(tmp_path / "a", 2, rows=64, cols=64, seed=7)
    again = make_ct_series(tmp_path / "b", 2, rows=64, cols=64, seed=7)
    other = make_ct_series(tmp_path / "c", 2, rows=64, cols=64, seed=8)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    ds = pydicom.dcmread(first[1])
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.Modality == "CT" and ds.InstanceNumber == 2 and ds.PatientName == "DOE^JOHN"
    assert ds.pixel_array.shape == (64, 64)
    assert ds.StudyInstanceUID == pydicom.dcmread(first[0]).StudyInstanceUID
    assert ds.SOPInstanceUID != pydicom.dcmread(other[1]).SOPInstanceUID


def test_ct_series_default_size_is_about_half_a_megabyte(tmp_path: Path) -> None:
    (path,) = make_ct_series(tmp_path, 1)
    assert 512 * 1024 < path.stat().st_size < 540 * 1024


def test_tiny_instances_are_small_and_distinct(tmp_path: Path) -> None:
    tiny = make_tiny_instances(tmp_path, 3)
    assert all(8_000 < p.stat().st_size < 12_000 for p in tiny)
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in tiny}
    assert len(uids) == 3


def test_multiframe_streams_header_and_pixels(tmp_path: Path) -> None:
    path = make_multiframe(tmp_path / "mf.dcm", 5 * 1024 * 1024)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    frame = ds.Rows * ds.Columns * 2
    assert ds.NumberOfFrames == 10
    assert path.stat().st_size == len(dataset_prefix(path)) + 12 + ds.NumberOfFrames * frame
    full = pydicom.dcmread(path)
    assert full.pixel_array.shape == (10, ds.Rows, ds.Columns)
    step = (full.pixel_array[1].astype(int) - full.pixel_array[0]) % 65536
    assert (step == 1).all()


def dataset_prefix(path: Path) -> bytes:
    """Everything before the pixel data element: header written by pydicom."""
    data = path.read_bytes()
    return data[: data.rindex(b"\xe0\x7f\x10\x00OW")]


def test_multiframe_frames_hint(tmp_path: Path) -> None:
    path = make_multiframe(tmp_path / "mf.dcm", 2 * 1024 * 1024, frames_hint=32)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.NumberOfFrames == 32


@pytest.mark.dcmtk
def test_multiframe_parses_with_dcmtk(tmp_path: Path) -> None:
    require_binary("dcmdump")
    path = make_multiframe(tmp_path / "mf.dcm", 1024 * 1024)
    result = dcmdump(path)
    assert result.returncode == 0, result.stderr
    assert "NumberOfFrames" in result.stdout and "PixelData" in result.stdout
    assert result.stderr == ""


def test_pydicom_storage_files_are_proper_and_unique() -> None:
    files = pydicom_storage_files()
    assert len(files) > 100
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    assert len({ds.SOPInstanceUID for ds in headers}) == len(files)
    syntaxes = {ds.file_meta.TransferSyntaxUID for ds in headers}
    assert pydicom.uid.JPEGBaseline8Bit in syntaxes
    assert pydicom.uid.DeflatedExplicitVRLittleEndian in syntaxes
    assert not any("truncated" in p.name for p in files)
    assert files == pydicom_storage_files()


def test_dataset_bytes_and_same_content(tmp_path: Path) -> None:
    (path,) = make_ct_series(tmp_path, 1, rows=32, cols=32)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.save_as(tmp_path / "implicit.dcm")
    implicit = tmp_path / "implicit.dcm"
    assert dataset_bytes(path) != dataset_bytes(implicit)
    assert same_content(path, implicit)
    assert dataset_bytes(path) == path.read_bytes()[-len(dataset_bytes(path)) :]
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.InstitutionName = "Elsewhere"
    ds.save_as(tmp_path / "changed.dcm")
    assert not same_content(path, tmp_path / "changed.dcm")


# -- DCMTK ---------------------------------------------------------------------------------


@pytest.mark.dcmtk
def test_echoscu_against_storescp(storescp: StoreSCP) -> None:
    require_binary("echoscu")
    result = echoscu(storescp.port, called_aet=storescp.aet)
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stderr


@pytest.mark.dcmtk
def test_storescu_series_arrives_in_storescp(storescp: StoreSCP, tmp_path: Path) -> None:
    require_binary("storescu")
    series = make_ct_series(tmp_path / "series", 4, rows=128, cols=128)
    result = storescu(series, storescp.port, called_aet=storescp.aet)
    assert result.returncode == 0, result.stderr
    assert len(storescp.received_files()) == 4
    for path in series:
        received = storescp.file_for(pydicom.dcmread(path).SOPInstanceUID)
        assert received is not None
        assert dataset_bytes(received) == dataset_bytes(path)


@pytest.mark.dcmtk
def test_storescu_sends_compressed_files_as_they_are(storescp: StoreSCP) -> None:
    require_binary("storescu")
    files = pydicom_storage_files()
    result = storescu(files, storescp.port, called_aet=storescp.aet, extra_args=["-nh"])
    assert result.returncode == 0, result.stderr
    assert "Store Failed" not in result.stderr
    assert len(storescp.received_files()) == len(files)
    for path in files:
        received = storescp.file_for(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert received is not None and same_content(path, received), path.name
        sent_syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        got_syntax = pydicom.dcmread(received, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert got_syntax == sent_syntax, path.name


# -- Orthanc -------------------------------------------------------------------------------


@pytest.mark.orthanc
def test_orthanc_stow_and_read_back(orthanc: OrthancServer, tmp_path: Path) -> None:
    (path,) = make_ct_series(tmp_path, 1)
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    with httpx.Client() as client:
        response = stow(client, f"{orthanc.dicomweb_url}/studies", [path])
        assert response.status_code == 200, response.text
        studies = client.get(f"{orthanc.dicomweb_url}/studies").json()
    assert len(studies) == 1
    assert orthanc.sop_instance_uids() == {uid}
    assert orthanc.instance_count() == 1
    stored = tmp_path / "stored.dcm"
    stored.write_bytes(orthanc.instance_file(uid))
    assert dataset_bytes(stored) == dataset_bytes(path)
    orthanc.reset()
    assert orthanc.instance_count() == 0


@pytest.mark.orthanc
@pytest.mark.dcmtk
def test_orthanc_takes_c_store_and_survives_restart(orthanc: OrthancServer, tmp_path: Path) -> None:
    require_binary("storescu")
    files = make_tiny_instances(tmp_path / "tiny", 3)
    result = storescu(files, orthanc.dicom_port, called_aet=orthanc.aet)
    assert result.returncode == 0, result.stderr
    uids = orthanc.wait_for_instances(3, timeout=10)
    ports, old_pid = (orthanc.http_port, orthanc.dicom_port), orthanc.pid
    orthanc.restart()
    assert _gone(old_pid)
    assert (orthanc.http_port, orthanc.dicom_port) == ports
    assert orthanc.sop_instance_uids() == uids


@pytest.mark.orthanc
def test_orthanc_start_failure_reports_log(tmp_path: Path) -> None:
    require_binary("Orthanc")
    # Orthanc binds every interface, so a listener on 0.0.0.0 makes its HTTP bind fail.
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = OrthancServer(tmp_path / "bad", config_overrides={"HttpPort": port})
        try:
            with pytest.raises(ProcessDiedError, match="log tail"):
                server.start(timeout=10)
            assert not server.alive
        finally:
            server.kill()


# -- gateway process (against a stand-in, since the real CLI may not exist yet) ------------

_FAKE_GATEWAY = textwrap.dedent(
    """
    import http.server, sys, threading, yaml
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Verification

    if sys.argv[1] != "serve":
        print("cli", *sys.argv[1:])
        raise SystemExit(3)
    config = yaml.safe_load(open(sys.argv[3]))
    node = config["node"]

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()
        def log_message(self, *args):
            pass

    http_server = http.server.HTTPServer(("127.0.0.1", node["http"]["port"]), Health)
    threading.Thread(target=http_server.serve_forever, daemon=True).start()
    ae = AE(ae_title=node["ae_title"])
    ae.add_supported_context(Verification)
    print("fake gateway up", flush=True)
    ae.start_server(("127.0.0.1", node["dimse"]["port"]), block=True)
    """
)


def test_gateway_process_lifecycle_with_stand_in(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    (fake / "gateway").mkdir(parents=True)
    (fake / "gateway" / "__init__.py").write_text("")
    (fake / "gateway" / "__main__.py").write_text(_FAKE_GATEWAY)
    config = write_config(
        tmp_path / "gateway.yaml",
        dimse_port=free_port(),
        http_port=free_port(),
        spool=tmp_path / "spool",
        database=tmp_path / "gateway.db",
        destinations={"pacs": {"type": "dimse", "ae_title": "PACS", "host": LOOPBACK, "port": 1}},
        routes=[{"name": "all", "forward": ["pacs"]}],
        extra={"dimse": {"allowed_callers": [{"ae_title": "CT1", "host": "127.0.0.1"}]}},
    )
    loaded = yaml.safe_load(config.read_text())
    assert loaded["storage"]["spool"] == f"file://{(tmp_path / 'spool').resolve()}"
    assert loaded["storage"]["database"] == f"sqlite:///{(tmp_path / 'gateway.db').resolve()}"
    assert loaded["dimse"] == {
        "max_associations": 16,
        "allowed_callers": [{"ae_title": "CT1", "host": "127.0.0.1"}],
    }
    gateway = GatewayProcess(config, tmp_path / "gw", env={"PYTHONPATH": str(fake)})
    assert gateway.probe_aet == "CT1"
    with gateway:
        first_pid = gateway.pid
        assert gateway.echo() == 0
        assert httpx.get(f"{gateway.http_url}/healthz").status_code == 200
        cli = gateway.run_cli("queue", "--config", str(config))
        assert cli.returncode == 3 and cli.stdout.strip() == f"cli queue --config {config}"
        gateway.kill()
        assert not gateway.alive and _gone(first_pid)
        gateway.start()
        assert gateway.pid != first_pid
    assert not gateway.alive
    assert "fake gateway up" in gateway.log_text()


def test_native_program_passes_over_python_console_scripts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom's ``storescu`` script in an activated virtualenv must not stand in for DCMTK."""
    from tests.harness.env import native_program

    scripts, native = tmp_path / "venv-bin", tmp_path / "usr-bin"
    for folder, first_line in ((scripts, "#!/venv/bin/python3\n"), (native, "\x7fELF")):
        folder.mkdir()
        program = folder / "storescu"
        program.write_text(first_line)
        program.chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(scripts), str(native)]))
    assert native_program("storescu") == str(native / "storescu")
    monkeypatch.setenv("PATH", str(scripts))
    assert native_program("storescu") is None
