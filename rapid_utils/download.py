"""Public labelled chips downloaded as a chips folder: EuroSAT-MS (`rapid-utils download`).

EuroSAT-MS (Helber et al. 2019) is 27,000 Sentinel-2 chips, 13 bands, 64 x 64 px, in 10 land
cover classes. `download_eurosat` fetches the publisher's zip into OUT (resuming an
interrupted download), checks its checksum and unpacks it as OUT/eurosat-ms/<ClassName>/*.tif,
the one-folder-per-class layout that `rapid_utils.corpus.chips` reads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import zipfile
import zlib
from collections import Counter
from pathlib import Path, PurePosixPath

import requests
from tqdm.auto import tqdm

from rapid_utils.corpus.chips import CHIP_SUFFIXES
from rapid_utils.io import write_json_atomic

log = logging.getLogger(__name__)

# The publisher's archive (DFKI, EuroSAT's authors) and its MD5 as torchgeo records them
# (torchgeo/datasets/eurosat.py, class EuroSAT: `url`, `md5`); the mirrors torchgeo and
# torchvision moved to later serve the same, unmodified file with the same MD5.
EUROSAT_URL = "https://madm.dfki.de/files/sentinel/EuroSATallBands.zip"
EUROSAT_MD5 = "5ac12b3b2557aa56e1826e981e8e200e"
ARCHIVE = "EuroSATallBands.zip"
FOLDER = "eurosat-ms"  # the chips folder inside OUT
MARKER = ".download.json"  # written last inside the chips folder: its chips are all there
CHUNK = 1 << 16  # bytes per read; an interrupted download loses at most the last one
TIMEOUT_S = (30, 60)  # to connect, and between two reads


class DownloadError(Exception):
    """A download that failed or an archive that cannot be used; the message names the fix."""


def download_eurosat(out: str | Path, url: str = EUROSAT_URL, md5: str | None = None,
                     sha256: str | None = None, progress: bool = True) -> Path:
    """OUT/eurosat-ms: EuroSAT-MS downloaded, verified and unpacked, unless already there.

    The archive is checked against `md5` and/or `sha256` (neither: the publisher's MD5) and
    kept as OUT/EuroSATallBands.zip; an interrupted download resumes from its `.part` file.
    """
    out = Path(out)
    chips = out / FOLDER
    if (chips / MARKER).is_file():
        log.info("%s is complete already: nothing to do", chips)
        return chips
    if chips.exists():
        raise DownloadError(f"{chips} exists but is not a complete download (it has no "
                            f"{MARKER}): move or delete it and run again")
    out.mkdir(parents=True, exist_ok=True)
    archive = out / ARCHIVE
    if not archive.is_file():
        part = out / f"{ARCHIVE}.part"
        _fetch(url, part, progress)
        os.replace(part, archive)
    expected = {name: value.lower() for name, value in (("md5", md5), ("sha256", sha256))
                if value}
    _verify(archive, expected or {"md5": EUROSAT_MD5}, progress)
    _unpack(archive, chips, progress)
    return chips


def _request(url: str, part: Path) -> tuple[requests.Response, int]:
    """A streaming GET of `url` from the end of `part` (if any), and the offset it starts at."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Accept-Encoding": "identity"}  # offsets count the archive's own bytes
    if offset:
        headers["Range"] = f"bytes={offset}-"
    response = requests.get(url, headers=headers, stream=True, timeout=TIMEOUT_S)
    if not offset:
        return response, 0
    resumed = response.headers.get("Content-Range", "").startswith(f"bytes {offset}-")
    if response.status_code == 206 and resumed:
        return response, offset
    if response.status_code in (206, 416):  # another range, or a .part as long as the file
        response.close()
        part.unlink()
        return _request(url, part)
    return response, 0  # the server ignored the Range (200): the whole file, from its start


def _fetch(url: str, part: Path, progress: bool) -> None:
    """Download `url` into `part`, continuing the bytes already in it where the server allows."""
    # Our own loop over requests, not pooch or torchvision's download_url: neither resumes an
    # interrupted download (HTTP Range), and this archive is 2 GB.
    try:
        response, offset = _request(url, part)
        with response:
            response.raise_for_status()
            length = response.headers.get("Content-Length")
            with open(part, "ab" if offset else "wb") as file, tqdm(
                    total=offset + int(length) if length else None, initial=offset, unit="B",
                    unit_scale=True, unit_divisor=1024, desc=ARCHIVE, disable=not progress
            ) as bar:
                for chunk in response.iter_content(CHUNK):
                    file.write(chunk)
                    bar.update(len(chunk))
    except requests.RequestException as error:
        saved = part.stat().st_size if part.is_file() else 0
        resume = f"; the next run resumes from the {saved} bytes in {part}" if saved else ""
        raise DownloadError(f"cannot download {url} ({error}): check the network connection "
                            f"(or pass --url with a mirror) and run again{resume}") from error


def _verify(archive: Path, expected: dict[str, str], progress: bool) -> None:
    """Refuse `archive` unless its digests match `expected` (hashlib name -> hex digest)."""
    digests = {name: hashlib.new(name, usedforsecurity=False) for name in expected}
    with open(archive, "rb") as file, tqdm(
            total=archive.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
            desc="verifying", disable=not progress) as bar:
        while chunk := file.read(CHUNK):
            for digest in digests.values():
                digest.update(chunk)
            bar.update(len(chunk))
    for name, value in expected.items():
        actual = digests[name].hexdigest()
        if actual != value:
            raise DownloadError(f"{archive} is corrupt or not the expected archive: its {name} "
                                f"is {actual}, expected {value}. Delete it and run again")


def _class_members(zipped: zipfile.ZipFile, archive: Path) -> list[tuple[zipfile.ZipInfo, str]]:
    """(member, "ClassName/chip.tif") per chip: the class is the folder holding the .tif,
    whatever prefix folders lie above it (EuroSAT's: ds/images/remote_sensing/...)."""
    members, parents = [], {}
    for info in zipped.infolist():
        path = PurePosixPath(info.filename)
        # hidden parts skip macOS's ._ copies and "..", which must not climb out of the folder
        if (info.is_dir() or path.suffix.lower() not in CHIP_SUFFIXES
                or any(part.startswith(".") for part in path.parts)):
            continue
        name = path.parent.name
        if not name:
            raise DownloadError(f"{archive} holds the chip {path} outside any class folder: "
                                "this is not an archive of one folder per class; delete it "
                                "and run again with the EuroSAT-MS archive")
        if parents.setdefault(name, path.parent) != path.parent:
            raise DownloadError(f"{archive} has two class folders named {name} "
                                f"({parents[name]} and {path.parent}): delete it and run "
                                "again with the EuroSAT-MS archive")
        members.append((info, f"{name}/{path.name}"))
    if not members:
        raise DownloadError(f"{archive} holds no .tif chips: it is not EuroSAT-MS; delete it "
                            "and run again with the EuroSAT-MS archive")
    return members


def _unpack(archive: Path, chips: Path, progress: bool) -> None:
    """Unpack the chips of `archive` as `chips`/<ClassName>/*.tif, all of them or none."""
    for stale in chips.parent.glob(f".{chips.name}.*.partial"):
        shutil.rmtree(stale)  # left by an unpack that was killed
    partial = chips.with_name(f".{chips.name}.{os.getpid()}.partial")
    partial.mkdir()
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = _class_members(zipped, archive)
            for info, name in tqdm(members, desc="unpacking", unit="chip",
                                   disable=not progress):
                target = partial / name
                target.parent.mkdir(exist_ok=True)
                with zipped.open(info) as source, open(target, "wb") as file:
                    shutil.copyfileobj(source, file, CHUNK)
        classes = Counter(name.split("/")[0] for _, name in members)
        write_json_atomic(partial / MARKER, {"archive": archive.name, "chips": len(members),
                                             "classes": dict(sorted(classes.items()))})
        os.rename(partial, chips)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise DownloadError(f"{archive} is not a valid zip archive ({error}): delete it and "
                            "run again") from error
    finally:
        shutil.rmtree(partial, ignore_errors=True)
