"""CORINE Land Cover (CLC) level-3 codes, the poster's 7 classes, and label targets.

The RapidAI4EO labels give, per site, the share of each of the 44 CLC level-3 classes.
The poster groups them into 7 classes; this module is the one place that mapping lives.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

# code: (level-3 name, level-2 name); level-1 follows from the first digit.
CLC_LEVEL3: dict[int, tuple[str, str]] = {
    111: ("Continuous urban fabric", "Urban fabric"),
    112: ("Discontinuous urban fabric", "Urban fabric"),
    121: ("Industrial or commercial units", "Industrial, commercial and transport units"),
    122: (
        "Road and rail networks and associated land",
        "Industrial, commercial and transport units",
    ),
    123: ("Port areas", "Industrial, commercial and transport units"),
    124: ("Airports", "Industrial, commercial and transport units"),
    131: ("Mineral extraction sites", "Mine, dump and construction sites"),
    132: ("Dump sites", "Mine, dump and construction sites"),
    133: ("Construction sites", "Mine, dump and construction sites"),
    141: ("Green urban areas", "Artificial, non-agricultural vegetated areas"),
    142: ("Sport and leisure facilities", "Artificial, non-agricultural vegetated areas"),
    211: ("Non-irrigated arable land", "Arable land"),
    212: ("Permanently irrigated land", "Arable land"),
    213: ("Rice fields", "Arable land"),
    221: ("Vineyards", "Permanent crops"),
    222: ("Fruit trees and berry plantations", "Permanent crops"),
    223: ("Olive groves", "Permanent crops"),
    231: ("Pastures", "Pastures"),
    241: ("Annual crops associated with permanent crops", "Heterogeneous agricultural areas"),
    242: ("Complex cultivation patterns", "Heterogeneous agricultural areas"),
    243: (
        "Land principally occupied by agriculture, with significant areas of natural vegetation",
        "Heterogeneous agricultural areas",
    ),
    244: ("Agro-forestry areas", "Heterogeneous agricultural areas"),
    311: ("Broad-leaved forest", "Forests"),
    312: ("Coniferous forest", "Forests"),
    313: ("Mixed forest", "Forests"),
    321: ("Natural grasslands", "Scrub and/or herbaceous vegetation associations"),
    322: ("Moors and heathland", "Scrub and/or herbaceous vegetation associations"),
    323: ("Sclerophyllous vegetation", "Scrub and/or herbaceous vegetation associations"),
    324: ("Transitional woodland-shrub", "Scrub and/or herbaceous vegetation associations"),
    331: ("Beaches, dunes, sands", "Open spaces with little or no vegetation"),
    332: ("Bare rocks", "Open spaces with little or no vegetation"),
    333: ("Sparsely vegetated areas", "Open spaces with little or no vegetation"),
    334: ("Burnt areas", "Open spaces with little or no vegetation"),
    335: ("Glaciers and perpetual snow", "Open spaces with little or no vegetation"),
    411: ("Inland marshes", "Inland wetlands"),
    412: ("Peat bogs", "Inland wetlands"),
    421: ("Salt marshes", "Maritime wetlands"),
    422: ("Salines", "Maritime wetlands"),
    423: ("Intertidal flats", "Maritime wetlands"),
    511: ("Water courses", "Inland waters"),
    512: ("Water bodies", "Inland waters"),
    521: ("Coastal lagoons", "Marine waters"),
    522: ("Estuaries", "Marine waters"),
    523: ("Sea and ocean", "Marine waters"),
}

CLC_LEVEL1: dict[int, str] = {
    1: "Artificial surfaces",
    2: "Agricultural areas",
    3: "Forest and semi-natural areas",
    4: "Wetlands",
    5: "Water bodies",
}

CLC_CODES: tuple[int, ...] = tuple(sorted(CLC_LEVEL3))
SHARE_COLUMNS: tuple[str, ...] = tuple(f"clc_{code}" for code in CLC_CODES)

# The poster's 7 classes, in the order used for class indices everywhere.
CLASSES: tuple[str, ...] = (
    "artificial",
    "agricultural",
    "forest",
    "shrub",
    "bare",
    "wetlands",
    "water",
)


def _poster_class(code: int) -> str:
    """Poster class of a level-3 code: level 1 decides, except level 3 splits by level 2."""
    level1, level2 = code // 100, code // 10
    if level1 == 3:
        return {31: "forest", 32: "shrub", 33: "bare"}[level2]
    return {1: "artificial", 2: "agricultural", 4: "wetlands", 5: "water"}[level1]


CLC7: dict[int, str] = {code: _poster_class(code) for code in CLC_CODES}


def clc_table() -> pd.DataFrame:
    """The 44 level-3 codes with names, parents and poster class, one row per code."""
    rows = [
        {
            "code": code,
            "name": name,
            "level2_code": code // 10,
            "level2_name": level2,
            "level1_code": code // 100,
            "level1_name": CLC_LEVEL1[code // 100],
            "poster_class": CLC7[code],
        }
        for code, (name, level2) in CLC_LEVEL3.items()
    ]
    return pd.DataFrame(rows).sort_values("code", ignore_index=True)


class LabelError(ValueError):
    """Label shares that cannot be used: unknown codes, wrong scale, shares not adding up."""


def parse_share_column(column: str) -> int:
    """Return the CLC code of a `clc_XXX` column, or raise LabelError for an unknown one."""
    code_text = column.removeprefix("clc_")
    if not code_text.isdigit() or int(code_text) not in CLC_LEVEL3:
        raise LabelError(
            f"unknown CORINE column {column!r}: expected one of clc_111 ... clc_523 "
            "(the 44 CLC 2018 level-3 codes)"
        )
    return int(code_text)


def normalise_shares(
    shares: pd.DataFrame, tolerance: float = 0.05
) -> tuple[pd.DataFrame, pd.Series]:
    """Bring share rows to fractions in [0, 1] and flag rows that cannot be used.

    The real label files and table may list only the classes present, so an absent column,
    an empty cell or a missing value (NaN, None, "") means a share of 0. A value that is not a
    finite number (text, a boolean, inf) or is negative makes its row a problem instead.
    Accepts both scales seen for CLC shares: fractions (rows sum to ~1) and percentages
    (rows sum to ~100), decided per row. Returns the fractions (all 44 columns) and a Series
    of problems per row ("" where the row is fine); the values of problem rows are not to be
    used. Rows are renormalised to sum to exactly 1 once they pass the tolerance check.
    """
    for column in shares.columns:
        parse_share_column(column)
    numbers = {column: _share_numbers(shares[column]) for column in shares.columns}
    values = pd.DataFrame(
        {column: number for column, (number, _) in numbers.items()}, index=shares.index
    ).reindex(columns=list(SHARE_COLUMNS), fill_value=0.0)
    problems = pd.Series("", index=shares.index, dtype="object")
    # checked in reverse order of priority: a later problem overwrites an earlier one
    totals = values.sum(axis=1)
    percent = totals > 1.0 + tolerance
    fractions = values.where(~percent, values / 100.0)
    fraction_totals = fractions.sum(axis=1)
    bad_total = (fraction_totals - 1.0).abs() > tolerance
    problems[bad_total] = [
        f"shares sum to {total:.3g} (expected 1 or 100)" for total in totals[bad_total]
    ]
    for column in reversed(list(SHARE_COLUMNS)):  # the first bad column is the one named
        if column not in numbers:
            continue
        number, not_a_number = numbers[column]
        negative = number < 0
        problems[negative] = [f"negative share: {column}={v!r}" for v in number[negative]]
        raw = shares.loc[not_a_number, column]
        problems[not_a_number] = [f"non-numeric share: {column}={v!r}" for v in raw]
    ok = problems == ""
    fractions.loc[ok] = fractions.loc[ok].div(fraction_totals[ok], axis=0)
    return fractions, problems


def _share_numbers(column: pd.Series) -> tuple[pd.Series, pd.Series]:
    """A share column as floats (missing values as 0) and where it holds no finite number."""
    if pd.api.types.is_bool_dtype(column):
        return pd.Series(0.0, index=column.index), pd.Series(True, index=column.index)
    if pd.api.types.is_numeric_dtype(column):
        number = column.astype("float64")
        not_a_number = np.isinf(number)
        return number.fillna(0.0).where(~not_a_number, 0.0), not_a_number
    # text or mixed values (a label file's JSON, a table column holding some text)
    missing = column.map(lambda v: v is None or v is pd.NA or _is_nan(v) or _is_blank(v))
    usable = column.map(lambda v: not isinstance(v, bool | np.bool_))
    number = pd.to_numeric(column.where(usable & ~missing), errors="coerce").astype("float64")
    not_a_number = ~missing & (number.isna() | np.isinf(number))
    return number.where(~missing & ~not_a_number, 0.0), not_a_number


def _is_nan(value: object) -> bool:
    return isinstance(value, float) and np.isnan(value)


def _is_blank(value: object) -> bool:
    return isinstance(value, str) and not value.strip()


def class_shares(shares: pd.DataFrame) -> pd.DataFrame:
    """Sum the 44 level-3 fractions into the 7 poster classes (columns in CLASSES order)."""
    grouped = {
        name: shares[[f"clc_{code}" for code in CLC_CODES if CLC7[code] == name]].sum(axis=1)
        for name in CLASSES
    }
    return pd.DataFrame(grouped, index=shares.index)


def dominant_class(shares: pd.DataFrame) -> pd.Series:
    """Index (into CLASSES) of the poster class covering most of each site: the poster's target."""
    return pd.Series(
        np.argmax(class_shares(shares).to_numpy(), axis=1), index=shares.index, name="label"
    )


def multilabel_targets(shares: pd.DataFrame, threshold: float = 0.1) -> pd.DataFrame:
    """0/1 per poster class: present when its share is at least `threshold` (a fraction)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"multi-label threshold must be in (0, 1], got {threshold}")
    return (class_shares(shares) >= threshold).astype("int64")


def class_names(indices: Iterable[int]) -> list[str]:
    """Poster class names for class indices."""
    return [CLASSES[int(i)] for i in indices]
