"""The RapidAI4EO on-disk naming scheme, in one place.

```
imagery/{utmz}/{tile}/{sample_id}/PF-SR/{YYYY-MM-DD}.tif
imagery/{utmz}/{tile}/{sample_id}/PF-QA/{YYYY-MM-DD}.tif
labels/{utmz}/{tile}/labels_{sample_id}.geojson
resources/rapidai4eo_labels.csv.gz
resources/rapidai4eo_geometries.geojson.gz
```
A real address is `imagery/33N/16E-243N/33N_16E-243N_39_05/PF-SR/2018-01-03.tif`: `utmz`
(`33N`) and `tile` (`16E-243N`) are the first two `_`-separated parts of `sample_id`, and the
rest (`39_05`) may hold further underscores, so an id is split on its first two only. The rest
looks like the column and row of a 600 m cell in a 24 km tile (40 x 600 m = 24 km; Planet's
Fusion grid is `UTM-24000`): inferred from public loaders, not confirmed, so only the split is
relied on. The embedded corpus writes ids in that form (`SITE_CELL_M`, `TILE_SIZE_M`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PF_SR = "PF-SR"
PF_QA = "PF-QA"
BANDS: tuple[str, ...] = ("blue", "green", "red", "nir")
REFLECTANCE_SCALE = 10_000  # stored value = surface reflectance x 10000
PIXEL_SIZE_M = 3.0
SITE_SIZE_PX = 200  # 600 m x 600 m at 3 m
SITE_CELL_M = 600  # a sample_id's `{col}_{row}` counts cells of this side in its tile (inferred)
TILE_SIZE_M = 24_000  # a tile name `{E}E-{N}N` counts UTM blocks of this side (inferred)

LABELS_CSV = Path("resources/rapidai4eo_labels.csv.gz")
GEOMETRIES_GEOJSON = Path("resources/rapidai4eo_geometries.geojson.gz")

# Planet Fusion dates in the corpus: every 5 days from 2018-01-03 to 2019-12-29 (146 dates).
PF_FIRST_DATE = dt.date(2018, 1, 3)
PF_LAST_DATE = dt.date(2019, 12, 29)
PF_CADENCE_DAYS = 5

# The rest may hold underscores (`39_05`), never a path separator or whitespace.
_SAMPLE_ID = re.compile(r"^(?P<utmz>\d{1,2}[NS])_(?P<tile>\d+E-\d+N)_(?P<rest>[^/\\\s]+)$")


class SampleIdError(ValueError):
    """A sample_id that does not follow `{utmz}_{tile}_{rest}`."""


@dataclass(frozen=True)
class SampleId:
    """The parts of a RapidAI4EO sample_id, e.g. `33N_16E-243N_39_05` (rest `39_05`)."""

    utmz: str
    tile: str
    rest: str

    @classmethod
    def parse(cls, sample_id: str) -> SampleId:
        match = _SAMPLE_ID.match(sample_id)
        if match is None:
            raise SampleIdError(
                f"sample_id {sample_id!r} does not follow '{{utmz}}_{{tile}}_{{rest}}', "
                "e.g. '33N_16E-243N_39_05'"
            )
        return cls(**match.groupdict())

    def __str__(self) -> str:
        return f"{self.utmz}_{self.tile}_{self.rest}"


def cell_sample_id(utmz: str, left: float, bottom: float) -> str:
    """The sample_id of the site whose south-west corner is at (`left`, `bottom`) in UTM metres:
    its tile (`TILE_SIZE_M` blocks) and, inside it, the column (eastward) and row (northward)
    of its `SITE_CELL_M` cell, as in `33N_16E-243N_39_05`. The embedded corpus's convention;
    the real corpus's row direction is not published."""
    east, north = int(left // TILE_SIZE_M), int(bottom // TILE_SIZE_M)
    col = int((left - east * TILE_SIZE_M) // SITE_CELL_M)
    row = int((bottom - north * TILE_SIZE_M) // SITE_CELL_M)
    return f"{utmz}_{east}E-{north}N_{col:02d}_{row:02d}"


def site_dir(root: Path, sample_id: str) -> Path:
    """Folder holding all imagery of one site."""
    sid = SampleId.parse(sample_id)
    return Path(root) / "imagery" / sid.utmz / sid.tile / sample_id


def raster_path(root: Path, sample_id: str, date: dt.date, product: str = PF_SR) -> Path:
    """Path of one Planet Fusion raster (PF-SR or PF-QA) of a site on a date."""
    return site_dir(root, sample_id) / product / f"{date.isoformat()}.tif"


def label_path(root: Path, sample_id: str) -> Path:
    """Path of a site's CLC label GeoJSON."""
    sid = SampleId.parse(sample_id)
    return Path(root) / "labels" / sid.utmz / sid.tile / f"labels_{sample_id}.geojson"


def date_from_raster_name(path: Path) -> dt.date:
    """The acquisition date encoded in a raster file name (`YYYY-MM-DD.tif`)."""
    return dt.date.fromisoformat(Path(path).stem)


def dated_rasters(folder: Path) -> Iterator[tuple[dt.date, Path]]:
    """(date, path) of each dated raster (`YYYY-MM-DD.tif`) in a product folder, unordered.

    Other files (overviews, auxiliary files) are not part of the series and are left out.
    A generator, so that asking whether a folder has any stops at the first one.
    """
    for path in Path(folder).glob("*.tif"):
        try:
            date = date_from_raster_name(path)
        except ValueError:
            continue
        yield date, path


def pf_dates() -> list[dt.date]:
    """All 146 Planet Fusion dates of the corpus (5-day cadence, 2018-2019)."""
    n_dates = (PF_LAST_DATE - PF_FIRST_DATE).days // PF_CADENCE_DAYS + 1
    return [PF_FIRST_DATE + dt.timedelta(days=PF_CADENCE_DAYS * i) for i in range(n_dates)]


def monthly(dates: list[dt.date]) -> list[dt.date]:
    """The first date of each (year, month) present in `dates`, in time order."""
    firsts: dict[tuple[int, int], dt.date] = {}
    for date in sorted(dates):
        firsts.setdefault((date.year, date.month), date)
    return list(firsts.values())
