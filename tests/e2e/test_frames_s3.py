"""WADO-RS frames, the Pixel Data bulk value and rendered frames from the S3 spool (SeaweedFS).

The same objects go to a gateway on a folder spool and one on an S3 spool; frames must be
the source's bytes on both, and one frame of a large object must cost about its own bytes of
S3 transfer, not a download of the object. The S3 gateway's spool is the same bucket through
a boto3 client that counts the bytes of every GET body (real S3 underneath; it only counts).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.data.data_manager import DATA_ROOT
from pydicom.encaps import generate_frames

from gateway.s3client import make_client
from gateway.spool import Spool
from gateway.spool.s3 import S3Spool
from tests.e2e.dicomweb_support import WebGateway, running_gateway, split_multipart
from tests.harness import LOOPBACK, free_port, make_multiframe
from tests.harness.encapsulated import make_jpeg_multiframe
from tests.harness.seaweedfs import SeaweedFS

pytestmark = pytest.mark.s3

RLE = Path(DATA_ROOT) / "test_files" / "rtdose_rle.dcm"  # 15 RLE frames, no offset table
JPEG_FRAME = 256 * 1024
NATIVE_FRAME = 512 * 512 * 2
OVERHEAD = 192 * 1024  # header, item headers and read-ahead allowed beyond a frame's bytes
AS_STORED = "multipart/related; type=application/octet-stream; transfer-syntax=*"


class CountingBody:
    """A GET body that adds what is read from it to its client's count."""

    def __init__(self, body: Any, counter: CountingClient) -> None:
        self._body = body
        self._counter = counter

    def read(self, amount: int | None = None) -> bytes:
        data: bytes = self._body.read(amount)
        self._counter.bytes += len(data)
        return data

    def close(self) -> None:
        self._body.close()


class CountingClient:
    """A real boto3 S3 client that counts GETs and their bytes; `down()` makes it unreachable."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.bytes = 0
        self.gets = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def get_object(self, **kwargs: Any) -> Any:
        response = self._client.get_object(**kwargs)
        self.gets += 1
        response["Body"] = CountingBody(response["Body"], self)
        return response

    def reset(self) -> None:
        self.bytes = self.gets = 0

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Point at a loopback port nobody listens on (a real connection refused)."""
        working = self._client
        self._client = make_client(
            endpoint_url=f"http://{LOOPBACK}:{free_port()}", max_attempts=1, connect_timeout=1
        )
        try:
            yield
        finally:
            self._client = working


@pytest.fixture(scope="module")
def objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, list[bytes]]]:
    """name -> (file, its frames as stored)."""
    root = tmp_path_factory.mktemp("frames-objects")
    native = make_multiframe(root / "native.dcm", 48 * NATIVE_FRAME)  # 24 MiB, 48 frames
    pixels = pydicom.dcmread(native).PixelData
    made = {
        "native": (
            native,
            [pixels[i : i + NATIVE_FRAME] for i in range(0, 48 * NATIVE_FRAME, NATIVE_FRAME)],
        ),
        "jpeg-no-offsets": make_jpeg_multiframe(
            root / "jpeg-none.dcm", frames=64, frame_bytes=JPEG_FRAME, fragments_per_frame=2
        ),
        "jpeg-basic": make_jpeg_multiframe(
            root / "jpeg-basic.dcm", frames=64, frame_bytes=JPEG_FRAME, offsets="basic", seed=1
        ),
        "jpeg-extended": make_jpeg_multiframe(
            root / "jpeg-ext.dcm", frames=64, frame_bytes=JPEG_FRAME, offsets="extended", seed=2
        ),
    }
    rle = pydicom.dcmread(RLE)
    made["rle"] = (RLE, list(generate_frames(rle.PixelData, number_of_frames=15)))
    return made


@pytest.fixture(scope="module")
def gateways(
    tmp_path_factory: pytest.TempPathFactory,
    seaweedfs_server: SeaweedFS,
    objects: dict[str, tuple[Path, list[bytes]]],
) -> Iterator[dict[str, Any]]:
    bucket = seaweedfs_server.create_bucket("frames-s3")
    root = tmp_path_factory.mktemp("frames-gateways")
    counting = CountingClient(seaweedfs_server.client())
    with pytest.MonkeyPatch.context() as env:
        for name, value in seaweedfs_server.env().items():
            env.setenv(name, value)

        def counted(spool: Spool) -> Spool:
            assert isinstance(spool, S3Spool)
            return S3Spool(spool.url, client=counting, staging_dir=spool.staging_dir)

        storage = {"spool": f"s3://{bucket}/spool", "database": "sqlite:///gateway.db"}
        with (
            running_gateway(root / "folder") as folder,
            running_gateway(root / "s3", extra={"storage": storage}, wrap_spool=counted) as s3,
        ):
            for web in (folder, s3):
                for path, _ in objects.values():
                    response = httpx.post(
                        f"{web.url}/studies",
                        content=path.read_bytes(),
                        headers={**web.headers, "Content-Type": "application/dicom"},
                        timeout=120,
                    )
                    assert response.status_code == 200, response.text
            yield {"folder": folder, "s3": s3, "counting": counting, "bucket": bucket}


def instance_url(web: WebGateway, path: Path) -> str:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return (
        f"{web.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def get(web: WebGateway, url: str, accept: str = AS_STORED, **params: Any) -> httpx.Response:
    return httpx.get(url, headers={**web.headers, "Accept": accept}, params=params, timeout=120)


def frames_of(response: httpx.Response) -> list[bytes]:
    assert response.status_code == 200, response.text
    return [part for _, part in split_multipart(response.content, response.headers["content-type"])]


@pytest.mark.parametrize("spool", ["folder", "s3"])
@pytest.mark.parametrize(
    "name", ["native", "jpeg-no-offsets", "jpeg-basic", "jpeg-extended", "rle"]
)
def test_frames_are_the_stored_frames(
    gateways: dict[str, Any], objects: dict[str, tuple[Path, list[bytes]]], spool: str, name: str
) -> None:
    web: WebGateway = gateways[spool]
    path, expected = objects[name]
    last = len(expected)
    numbers = [1, last, last // 2, 2]
    got = frames_of(get(web, instance_url(web, path) + "/frames/" + ",".join(map(str, numbers))))
    assert got == [expected[n - 1] for n in numbers]
    missing = get(web, instance_url(web, path) + f"/frames/{last + 1}")
    assert missing.status_code == 404


def test_pixel_data_bulk_and_rendered_frames_match_the_folder_spool(
    gateways: dict[str, Any], objects: dict[str, tuple[Path, list[bytes]]]
) -> None:
    path, expected = objects["native"]
    folder, s3 = gateways["folder"], gateways["s3"]
    [bulk] = frames_of(get(s3, instance_url(s3, path) + "/bulk/7FE00010", "multipart/related"))
    assert bulk == b"".join(expected)
    for name in ("native", "jpeg-no-offsets", "rle"):
        source = objects[name][0]
        pictures = [
            get(web, instance_url(web, source) + "/frames/3/rendered", "image/png")
            for web in (folder, s3)
        ]
        assert [p.status_code for p in pictures] == [200, 200], pictures[1].text
        assert pictures[0].content == pictures[1].content, name


@pytest.mark.parametrize(
    ("name", "frame_bytes"),
    [
        ("native", NATIVE_FRAME),
        ("jpeg-no-offsets", JPEG_FRAME),
        ("jpeg-basic", JPEG_FRAME),
        ("jpeg-extended", JPEG_FRAME),
    ],
)
def test_one_frame_fetches_about_its_own_bytes_from_s3(
    gateways: dict[str, Any],
    objects: dict[str, tuple[Path, list[bytes]]],
    name: str,
    frame_bytes: int,
) -> None:
    web: WebGateway = gateways["s3"]
    counting: CountingClient = gateways["counting"]
    path, expected = objects[name]
    size = path.stat().st_size
    assert size > 40 * frame_bytes
    url = instance_url(web, path)
    counting.reset()
    assert frames_of(get(web, url + "/frames/40")) == [expected[39]]
    fetched, gets = counting.bytes, counting.gets
    print(f"{name}: frame 40 of a {size}-byte object fetched {fetched} bytes in {gets} GETs")
    assert fetched <= frame_bytes + OVERHEAD, (fetched, size)
    counting.reset()
    picture = get(web, url + "/frames/40/rendered", "image/png")
    assert picture.status_code == 200
    assert counting.bytes <= 2 * (frame_bytes + OVERHEAD), (counting.bytes, size)


def test_s3_errors_stay_clear_problems(
    gateways: dict[str, Any],
    objects: dict[str, tuple[Path, list[bytes]]],
    seaweedfs_server: SeaweedFS,
    tmp_path: Path,
) -> None:
    web: WebGateway = gateways["s3"]
    counting: CountingClient = gateways["counting"]
    native_url = instance_url(web, objects["native"][0])
    with counting.down():
        unreachable = get(web, native_url + "/frames/1")
        rendered = get(web, native_url + "/frames/1/rendered", "image/png")
    assert unreachable.status_code == 503, unreachable.text
    assert "unreachable" in unreachable.json()["detail"]
    assert rendered.status_code == 503
    # An object cut short in the bucket after it was stored (the database knows its full size).
    path, _ = objects["jpeg-no-offsets"]
    client = seaweedfs_server.client()
    [listed] = [
        item["Key"]
        for item in client.list_objects_v2(Bucket=gateways["bucket"])["Contents"]
        if pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID in item["Key"]
    ]
    data = client.get_object(Bucket=gateways["bucket"], Key=listed)["Body"].read()
    client.put_object(Bucket=gateways["bucket"], Key=listed, Body=data[: len(data) // 2])
    try:
        cut = get(web, instance_url(web, path) + "/frames/60")
        assert cut.status_code == 500, cut.text
        assert "cannot locate frame 60" in cut.json()["detail"]
        assert len(frames_of(get(web, instance_url(web, path) + "/frames/1"))) == 1
    finally:
        client.put_object(Bucket=gateways["bucket"], Key=listed, Body=data)
