"""`rapid-utils download eurosat`: download, resume, checksums, unpacking, errors.

A small EuroSAT-like zip (13-band GeoTIFFs under EuroSAT's nested prefix) is served from
127.0.0.1 by an HTTP server in a thread that honours Range requests, or ignores them, or cuts
the connection once after a few bytes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import socket
import struct
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rapid_utils import cli, download
from rapid_utils.corpus.chips import ChipsSpec, build_chips_index

PREFIX = "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"
CLASSES = ("AnnualCrop", "Forest", "SeaLake")
PER_CLASS = 2


def _chip_bytes(path: Path, rng: np.random.Generator) -> bytes:
    """A 13-band uint16 32 x 32 GeoTIFF, as EuroSAT-MS stores its chips (smaller)."""
    data = rng.integers(100, 3000, size=(13, 32, 32), dtype=np.uint16)
    with rasterio.open(path, "w", driver="GTiff", width=32, height=32, count=13,
                       dtype="uint16", crs="EPSG:32632",
                       transform=rasterio.transform.from_origin(500000, 5000000, 10, 10)) as dst:
        dst.write(data)
    return path.read_bytes()


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The zip: PREFIX/<Class>/<Class>_<n>.tif, folder entries and a macOS ._ copy."""
    folder = tmp_path_factory.mktemp("archive")
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zipped:
        zipped.mkdir(PREFIX)
        for name in CLASSES:
            for n in range(1, PER_CLASS + 1):
                member = f"{PREFIX}/{name}/{name}_{n}.tif"
                zipped.writestr(member, _chip_bytes(folder / "chip.tif", rng))
        zipped.writestr(f"__MACOSX/{PREFIX}/Forest/._Forest_1.tif", b"resource fork")
    return buffer.getvalue()


@dataclass
class Served:
    """What the test server sends, and the Range header of each request it got."""

    payload: bytes
    honour_range: bool = True
    cut_after: int | None = None  # send only this many bytes of the next response
    ranges: list[str | None] = field(default_factory=list)


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked = self.headers.get("Range")
            served.ranges.append(asked)
            start = 0
            if asked and served.honour_range:
                start = int(asked.removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range",
                                 f"bytes {start}-{len(served.payload) - 1}/{len(served.payload)}")
            else:
                self.send_response(200)
            body = served.payload[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if served.cut_after is not None:  # then the connection closes, short of its length
                body, served.cut_after = body[:served.cut_after], None
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # keep the test output clean
            pass

    return Handler


@pytest.fixture
def serve() -> Iterator:
    """serve(payload) -> (url, Served); the servers stop after the test."""
    servers = []

    def start(payload: bytes) -> tuple[str, Served]:
        served = Served(payload)
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/{download.ARCHIVE}", served

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def md5(payload: bytes) -> str:
    return hashlib.md5(payload).hexdigest()


def assert_nothing_unpacked(out: Path) -> None:
    assert not (out / download.FOLDER).exists()
    assert not list(out.glob(f".{download.FOLDER}*"))  # no partial folder left either


def test_download_unpacks_one_folder_per_class_then_does_nothing(
        serve, archive: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url, served = serve(archive)
    with caplog.at_level(logging.INFO):
        chips = download.download_eurosat(tmp_path, url=url, progress=False,
                                          sha256=hashlib.sha256(archive).hexdigest())
    assert caplog.text == ""  # silent when all is well
    assert chips == tmp_path / "eurosat-ms"
    assert sorted(p.name for p in chips.iterdir() if p.is_dir()) == list(CLASSES)
    assert sorted(p.name for p in (chips / "Forest").iterdir()) == ["Forest_1.tif", "Forest_2.tif"]
    assert (tmp_path / download.ARCHIVE).read_bytes() == archive  # kept, verified
    assert not (tmp_path / f"{download.ARCHIVE}.part").exists()
    index = build_chips_index(ChipsSpec(root=chips, bands=(2, 3, 4, 8)), progress=False)
    assert index.classes == CLASSES
    assert len(index.labelled) == len(CLASSES) * PER_CLASS
    with caplog.at_level(logging.INFO):
        assert download.download_eurosat(tmp_path, url=url, progress=False) == chips
    assert "complete already: nothing to do" in caplog.text
    assert served.ranges == [None]  # the second call asked the server nothing


def test_interrupted_download_resumes_with_a_range_request(
        serve, archive: bytes, tmp_path: Path) -> None:
    url, served = serve(archive)
    served.cut_after = 100_000
    assert len(archive) > served.cut_after
    with pytest.raises(download.DownloadError, match="cannot download .*") as cut:
        download.download_eurosat(tmp_path, url=url, md5=md5(archive), progress=False)
    part = tmp_path / f"{download.ARCHIVE}.part"
    saved = part.stat().st_size
    assert str(cut.value).endswith(f"run again; the next run resumes from the {saved} bytes "
                                   f"in {part}")
    assert 0 < saved <= 100_000  # whole reads only
    assert_nothing_unpacked(tmp_path)
    download.download_eurosat(tmp_path, url=url, md5=md5(archive), progress=False)
    assert served.ranges == [None, f"bytes={saved}-"]
    assert (tmp_path / download.ARCHIVE).read_bytes() == archive
    assert len(list((tmp_path / "eurosat-ms").glob("*/*.tif"))) == len(CLASSES) * PER_CLASS


def test_server_ignoring_range_restarts_the_download_cleanly(
        serve, archive: bytes, tmp_path: Path) -> None:
    url, served = serve(archive)
    served.honour_range = False
    (tmp_path / f"{download.ARCHIVE}.part").write_bytes(b"stale bytes" * 10)
    download.download_eurosat(tmp_path, url=url, md5=md5(archive), progress=False)
    assert served.ranges == ["bytes=110-"]
    assert (tmp_path / download.ARCHIVE).read_bytes() == archive


def test_checksum_mismatch_is_refused(serve, archive: bytes, tmp_path: Path) -> None:
    url, _ = serve(archive)
    zip_path = tmp_path / download.ARCHIVE
    with pytest.raises(download.DownloadError) as refused:
        download.download_eurosat(tmp_path, url=url, md5="0" * 32, progress=False)
    assert str(refused.value) == (
        f"{zip_path} is corrupt or not the expected archive: its md5 is {md5(archive)}, "
        f"expected {'0' * 32}. Delete it and run again")
    assert_nothing_unpacked(tmp_path)


def _flip_a_byte_of_the_last_chip(payload: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(payload)) as zipped:
        info = [i for i in zipped.infolist() if i.filename.endswith("_2.tif")][-1]
    at = info.header_offset + 26  # the local header's name and extra field lengths
    name_length, extra_length = struct.unpack("<HH", payload[at:at + 4])
    at += 4 + name_length + extra_length + info.compress_size // 2
    return payload[:at] + bytes([payload[at] ^ 0xFF]) + payload[at + 1:]


@pytest.mark.parametrize("damage", ["flipped byte", "not a zip"])
def test_corrupt_zip_with_a_matching_checksum_is_refused(
        serve, archive: bytes, tmp_path: Path, damage: str) -> None:
    payload = (_flip_a_byte_of_the_last_chip(archive) if damage == "flipped byte"
               else b"<html>503 Service Unavailable</html>")
    url, _ = serve(payload)
    with pytest.raises(download.DownloadError,
                       match=rf"^{tmp_path / download.ARCHIVE} is not a valid zip archive .*: "
                       "delete it and run again$"):
        download.download_eurosat(tmp_path, url=url, md5=md5(payload), progress=False)
    assert_nothing_unpacked(tmp_path)


def test_foreign_chips_folder_is_left_alone(serve, archive: bytes, tmp_path: Path) -> None:
    url, served = serve(archive)
    (tmp_path / "eurosat-ms" / "Forest").mkdir(parents=True)
    with pytest.raises(download.DownloadError, match="not a complete download"):
        download.download_eurosat(tmp_path, url=url, md5=md5(archive), progress=False)
    assert served.ranges == []


def test_cli_reports_a_refused_connection_in_one_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture) -> None:
    with socket.socket() as probe:  # a port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/{download.ARCHIVE}"
    with caplog.at_level(logging.ERROR):
        code = cli.main(["download", "eurosat", "--out", str(tmp_path), "--url", url])
    assert code == 2
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"error: cannot download {url}"]
    assert "Traceback" not in capsys.readouterr().err
    assert_nothing_unpacked(tmp_path)
