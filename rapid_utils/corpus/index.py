"""The corpus index: one row per usable site, with its location and CLC label shares.

Built from `resources/` when the corpus has a usable label table (fast, one file for all
sites), otherwise by walking `labels/` and `imagery/`. The table's columns are checked once:
one that cannot be used (no `sample_id`, no or unknown `clc_` columns) is named with what was
found and expected, and the per-site label files are read instead. Sites that cannot be used
are skipped, counted and logged; the table of skipped sites and reasons is kept in
`index.attrs["skipped"]`.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from rapid_utils import labels
from rapid_utils.corpus import layout
from rapid_utils.corpus.reader import CorpusError, CorpusNotFoundError

log = logging.getLogger(__name__)

SKIPPED_COLUMNS = ["sample_id", "path", "reason"]


def build_index(
    root: str | Path,
    check_imagery: bool = True,
    share_tolerance: float = 0.05,
    progress: bool = True,
) -> pd.DataFrame:
    """Index the corpus under `root`: sample_id, utmz, tile, lon, lat, geometry, shares, label.

    Shares (`clc_111` ... `clc_523`) are fractions summing to 1; `label` is the index of
    the dominant poster class and `label_name` its name. A class a label file or table row
    does not list (absent key, empty cell) has share 0; non-numeric or negative shares skip
    the site. With `check_imagery`, sites without a dated PF-SR raster are skipped too, and
    `dates` holds each site's PF-SR dates (ISO, space-separated), listed once here: the
    Datasets read them from the index instead of listing every site's folder every epoch in
    every DataLoader worker (375,000 listings an epoch at poster scale).
    """
    root = Path(root)
    if not root.is_dir():
        raise CorpusNotFoundError(
            f"no corpus folder at {root}: point the parameter to a RapidAI4EO download, "
            f"or generate the embedded corpus with `rapid-utils synth --out {root}`"
        )
    table = _usable_label_table(root)
    if table is not None:
        shares, geometries, skipped = _from_resources(root, table)
    elif (root / "labels").is_dir():
        shares, geometries, skipped = _from_label_files(root, progress)
    else:
        raise CorpusNotFoundError(
            f"{root} holds no RapidAI4EO labels: expected {layout.LABELS_CSV} or a labels/ "
            f"folder. Generate the embedded corpus with `rapid-utils synth --out {root}`"
        )
    fractions, problems = labels.normalise_shares(shares, tolerance=share_tolerance)
    bad = problems != ""
    skipped += [(sid, _label_source(root, sid, table is not None), reason)
                for sid, reason in problems[bad].items()]
    fractions = fractions[~bad]
    dates = None
    if check_imagery:
        dates = {sid: _site_dates(root, sid) for sid in fractions.index}
        imagery = {sid: _imagery_problem(root, sid, found) for sid, found in dates.items()}
        unusable = {sid: reason for sid, reason in imagery.items() if reason}
        skipped += [
            (sid, str(layout.site_dir(root, sid) / layout.PF_SR), reason)
            for sid, reason in unusable.items()
        ]
        fractions = fractions.drop(index=list(unusable))
    index = _assemble(fractions, geometries, dates)
    index.attrs["root"] = str(root)
    index.attrs["skipped"] = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)
    _log_skipped(index.attrs["skipped"], len(index))
    if index.empty:
        raise CorpusError(f"no usable site in {root}; see the skipped reasons logged above")
    return index


def _label_source(root: Path, sample_id: str, from_table: bool) -> str:
    """The file a site's label shares came from: the resources table or its own label file."""
    if from_table:
        return str(root / layout.LABELS_CSV)
    return str(layout.label_path(root, sample_id))


def _site_dates(root: Path, sample_id: str) -> list[dt.date] | None:
    """A site's PF-SR dates, sorted; None when it has no PF-SR folder."""
    folder = layout.site_dir(root, sample_id) / layout.PF_SR
    if not folder.is_dir():
        return None
    return sorted(date for date, _ in layout.dated_rasters(folder))


def _imagery_problem(root: Path, sample_id: str, dates: list[dt.date] | None) -> str:
    """Why a site's PF-SR series (`_site_dates`) cannot be read ("" if it can): checked once
    here, rather than found by a DataLoader worker hours into a run."""
    if dates is None:
        return "imagery missing"
    if not dates:
        return f"no dated {layout.PF_SR} raster"
    return ""


def dates_of(index: pd.DataFrame) -> dict[str, list[dt.date]] | None:
    """Each site's dates as the index recorded them (`build_index`), or None without them."""
    if "dates" not in index:
        return None
    return {sid: [dt.date.fromisoformat(d) for d in text.split()]
            for sid, text in zip(index["sample_id"], index["dates"], strict=True)}


def _usable_label_table(root: Path) -> pd.DataFrame | None:
    """The corpus's label table when it exists and its columns can be used; else None, with a
    warning naming what it found when the per-site label files can be read instead."""
    path = root / layout.LABELS_CSV
    if not path.is_file():
        return None
    problem = ""
    try:
        # only an empty cell is a missing share (0); text such as "n/a" is refused, not zeroed
        table = pd.read_csv(path, dtype={"sample_id": str}, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, EOFError) as error:
        problem = f"cannot read label table {path}: {error}"
    else:
        problem = _label_table_problem(path, list(table.columns))
    if not problem:
        return table
    if not (root / "labels").is_dir():
        raise CorpusError(f"{problem}; {root} has no labels/ folder to read instead")
    log.warning("%s; reading the per-site label files under %s instead", problem, root / "labels")
    return None


def _label_table_problem(path: Path, columns: list[str]) -> str:
    """Why a label table's columns cannot be used ("" when they can)."""
    shares = [c for c in columns if c.startswith("clc_")]
    unknown = []
    for column in shares:
        try:
            labels.parse_share_column(column)
        except labels.LabelError:
            unknown.append(column)
    if "sample_id" in columns and shares and not unknown:
        return ""
    shown = ", ".join(repr(c) for c in columns[:12]) + (" ..." if len(columns) > 12 else "")
    why = ("no 'sample_id' column" if "sample_id" not in columns
           else "no 'clc_XXX' share column" if not shares
           else f"unknown CORINE column(s) {', '.join(map(repr, unknown[:5]))}")
    return (f"label table {path} cannot be used ({why}): it has the columns {shown}; expected "
            "'sample_id' and share columns among clc_111 ... clc_523 (the 44 CLC level-3 codes)")


def _from_resources(root: Path, table: pd.DataFrame) -> tuple[pd.DataFrame, dict, list]:
    path = root / layout.LABELS_CSV
    share_columns = [c for c in table.columns if c.startswith("clc_")]
    skipped = []
    bad_ids = [sid for sid in table["sample_id"] if not _valid_sample_id(sid)]
    skipped += [(sid, str(path), "malformed sample_id") for sid in bad_ids]
    duplicated = table["sample_id"].duplicated()
    skipped += [(sid, str(path), "duplicate row") for sid in table.loc[duplicated, "sample_id"]]
    table = table[~duplicated & ~table["sample_id"].isin(bad_ids)]
    shares = table.set_index("sample_id")[share_columns]
    geometry_path = root / layout.GEOMETRIES_GEOJSON
    geometries = {}
    if geometry_path.is_file():
        with gzip.open(geometry_path, "rt") as fh:
            for feature in json.load(fh)["features"]:
                geometries[str(feature["properties"]["sample_id"])] = feature["geometry"]
    else:
        log.warning("no %s: site locations will be missing (NaN lon/lat)", geometry_path)
    return shares, geometries, skipped


def _from_label_files(root: Path, progress: bool) -> tuple[pd.DataFrame, dict, list]:
    rows, geometries, skipped = {}, {}, []
    label_files = sorted((root / "labels").glob("*/*/labels_*.geojson"))
    for path in tqdm(label_files, desc="reading label files", unit="file", disable=not progress):
        sample_id = path.stem.removeprefix("labels_")
        if not _valid_sample_id(sample_id):
            skipped.append((sample_id, str(path), "malformed sample_id"))
            continue
        try:
            feature = _read_label_feature(path)
            properties = feature.get("properties") or {}
            shares = {k: v for k, v in properties.items() if k.startswith("clc_")}
            for column in shares:
                labels.parse_share_column(column)
            if not shares:
                raise labels.LabelError("no clc_ properties")
        except (OSError, ValueError, KeyError) as error:  # LabelError is a ValueError
            skipped.append((sample_id, str(path), f"bad label file: {error}"))
            continue
        rows[sample_id] = shares
        geometries[sample_id] = feature.get("geometry")
    imagery_sites = {p.name for p in (root / "imagery").glob("*/*/*") if p.is_dir()}
    # sites with a bad label file are already skipped above; do not count them twice
    labelled = {path.stem.removeprefix("labels_") for path in label_files}
    skipped += [
        (sid, str(layout.label_path(root, sid)), "label file missing")
        for sid in sorted(imagery_sites - labelled)
        if _valid_sample_id(sid)
    ]
    shares = pd.DataFrame.from_dict(rows, orient="index").rename_axis("sample_id")
    return shares, geometries, skipped


def _read_label_feature(path: Path) -> dict:
    """The single Feature of a label file (a bare Feature or a one-feature collection)."""
    content = json.loads(path.read_text())
    if content.get("type") == "FeatureCollection":
        features = content.get("features") or []
        if len(features) != 1:
            raise ValueError(f"expected one Feature, found {len(features)}")
        return features[0]
    if content.get("type") != "Feature":
        raise ValueError("not a GeoJSON Feature")
    return content


def _valid_sample_id(sample_id: object) -> bool:
    if not isinstance(sample_id, str):  # an empty cell of the label table reads as NaN
        return False
    try:
        layout.SampleId.parse(sample_id)
    except layout.SampleIdError:
        return False
    return True


def _centroid(geometry: dict | None) -> tuple[float, float]:
    """Mean of a polygon's outer ring vertices: exact enough for 600 m squares."""
    if not geometry or geometry.get("type") != "Polygon":
        return np.nan, np.nan
    ring = np.asarray(geometry["coordinates"][0], dtype=float)
    if len(ring) > 1 and np.allclose(ring[0], ring[-1]):
        ring = ring[:-1]
    lon, lat = ring.mean(axis=0)
    return float(lon), float(lat)


def _assemble(fractions: pd.DataFrame, geometries: dict,
              dates: dict[str, list[dt.date]] | None = None) -> pd.DataFrame:
    fractions = fractions.sort_index()
    ids = fractions.index.to_series()
    parts = ids.map(layout.SampleId.parse)
    centroids = ids.map(lambda sid: _centroid(geometries.get(sid)))
    index = pd.DataFrame(
        {
            "sample_id": ids.to_numpy(),
            "utmz": [p.utmz for p in parts],
            "tile": [f"{p.utmz}_{p.tile}" for p in parts],
            "lon": [c[0] for c in centroids],
            "lat": [c[1] for c in centroids],
            "geometry": [geometries.get(sid) for sid in ids],
        }
    )
    shares = fractions.reset_index(drop=True)
    index = pd.concat([index, shares], axis=1)
    index["label"] = labels.dominant_class(shares).to_numpy()
    index["label_name"] = labels.class_names(index["label"])
    if dates is not None:
        index["dates"] = [" ".join(d.isoformat() for d in dates[sid]) for sid in ids]
    return index


def _log_skipped(skipped: pd.DataFrame, n_kept: int) -> None:
    if skipped.empty:
        return
    reasons = skipped["reason"].str.split(":").str[0].value_counts()
    summary = ", ".join(f"{count} {reason}" for reason, count in reasons.items())
    log.warning(
        "skipped %d of %d sites (%s); details in index.attrs['skipped']",
        len(skipped),
        len(skipped) + n_kept,
        summary,
    )
