"""CORINE codes, the poster's 7-class mapping, share normalisation and label targets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rapid_utils import labels
from rapid_utils.labels import CLASSES, CLC7, CLC_CODES, SHARE_COLUMNS, LabelError

# The 44 CLC 2018 level-3 codes per poster class, as listed in shared/REAL_FORMAT.md.
EXPECTED = {
    "artificial": [111, 112, 121, 122, 123, 124, 131, 132, 133, 141, 142],
    "agricultural": [211, 212, 213, 221, 222, 223, 231, 241, 242, 243, 244],
    "forest": [311, 312, 313],
    "shrub": [321, 322, 323, 324],
    "bare": [331, 332, 333, 334, 335],
    "wetlands": [411, 412, 421, 422, 423],
    "water": [511, 512, 521, 522, 523],
}


def shares_row(**fractions: float) -> dict[str, float]:
    """A full 44-column share row from keyword shares such as clc_311=0.2."""
    row = dict.fromkeys(SHARE_COLUMNS, 0.0)
    for column, value in fractions.items():
        assert column in row, column
        row[column] = value
    return row


def test_the_44_codes_match_the_real_format():
    expected = sorted(code for codes in EXPECTED.values() for code in codes)
    assert len(expected) == 44
    assert list(CLC_CODES) == expected
    assert list(SHARE_COLUMNS) == [f"clc_{code}" for code in expected]


@pytest.mark.parametrize("poster_class", list(EXPECTED))
def test_clc7_maps_every_code_to_its_poster_class(poster_class):
    for code in EXPECTED[poster_class]:
        assert CLC7[code] == poster_class, code


@pytest.mark.parametrize(
    ("code", "poster_class"),
    [
        (141, "artificial"),
        (142, "artificial"),
        (244, "agricultural"),
        (231, "agricultural"),
        (313, "forest"),
        (321, "shrub"),
        (324, "shrub"),
        (331, "bare"),
        (335, "bare"),
        (412, "wetlands"),
        (423, "wetlands"),
        (511, "water"),
        (523, "water"),
    ],
)
def test_clc7_boundary_codes(code, poster_class):
    assert CLC7[code] == poster_class


def test_classes_are_the_poster_seven_in_order():
    assert CLASSES == (
        "artificial",
        "agricultural",
        "forest",
        "shrub",
        "bare",
        "wetlands",
        "water",
    )
    assert set(CLC7.values()) == set(CLASSES)


def test_clc_table_columns_and_parents():
    table = labels.clc_table()
    assert list(table.columns) == [
        "code",
        "name",
        "level2_code",
        "level2_name",
        "level1_code",
        "level1_name",
        "poster_class",
    ]
    assert len(table) == 44
    assert table["code"].tolist() == list(CLC_CODES)
    assert (table["level2_code"] == table["code"] // 10).all()
    assert (table["level1_code"] == table["code"] // 100).all()
    assert table["poster_class"].tolist() == [CLC7[c] for c in CLC_CODES]
    row = table.set_index("code")
    assert row.loc[311, "name"] == "Broad-leaved forest"
    assert row.loc[311, "level2_name"] == "Forests"
    assert row.loc[311, "level1_name"] == "Forest and semi-natural areas"
    assert row.loc[523, "name"] == "Sea and ocean"
    assert row.loc[523, "level2_name"] == "Marine waters"
    assert row.loc[141, "level1_name"] == "Artificial surfaces"
    assert row.loc[423, "level1_name"] == "Wetlands"
    # every level-2 group has one name
    assert (table.groupby("level2_code")["level2_name"].nunique() == 1).all()
    assert table["name"].is_unique


@pytest.mark.parametrize("column", ["clc_111", "clc_244", "clc_523"])
def test_parse_share_column_known(column):
    assert labels.parse_share_column(column) == int(column[4:])


@pytest.mark.parametrize("column", ["clc_999", "clc_110", "clc_abc", "sample_id", "clc_"])
def test_parse_share_column_unknown(column):
    with pytest.raises(LabelError, match="unknown CORINE column"):
        labels.parse_share_column(column)


def test_label_error_is_a_value_error():
    assert issubclass(LabelError, ValueError)


def test_normalise_shares_accepts_both_scales_identically():
    fractions = pd.DataFrame(
        [
            shares_row(clc_311=0.2, clc_312=0.2, clc_211=0.35, clc_512=0.25),
            shares_row(clc_112=1.0),
            shares_row(clc_231=0.5, clc_324=0.3, clc_411=0.2),
        ],
        index=["a", "b", "c"],
    )
    percent = fractions * 100
    from_fractions, problems_f = labels.normalise_shares(fractions)
    from_percent, problems_p = labels.normalise_shares(percent)
    assert (problems_f == "").all()
    assert (problems_p == "").all()
    assert list(from_percent.columns) == list(SHARE_COLUMNS)
    np.testing.assert_allclose(from_percent.to_numpy(), from_fractions.to_numpy(), atol=1e-12)
    np.testing.assert_allclose(from_fractions.to_numpy(), fractions.to_numpy(), atol=1e-12)
    np.testing.assert_allclose(from_percent.sum(axis=1), 1.0)


def test_normalise_shares_decides_scale_per_row_and_fills_missing_columns():
    mixed = pd.DataFrame({"clc_311": [0.6, 60.0], "clc_211": [0.4, 40.0]}, index=["f", "p"])
    fractions, problems = labels.normalise_shares(mixed)
    assert (problems == "").all()
    assert fractions.shape == (2, 44)
    assert fractions.loc["f", "clc_311"] == pytest.approx(0.6)
    assert fractions.loc["p", "clc_311"] == pytest.approx(0.6)
    assert fractions.loc["p", "clc_523"] == 0.0


def test_normalise_shares_renormalises_rows_within_tolerance():
    rows = pd.DataFrame([shares_row(clc_311=0.49, clc_211=0.49)])  # sums to 0.98
    fractions, problems = labels.normalise_shares(rows)
    assert problems.iloc[0] == ""
    assert fractions.sum(axis=1).iloc[0] == pytest.approx(1.0)
    assert fractions.loc[0, "clc_311"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (shares_row(clc_311=0.3, clc_211=0.2), "shares sum to 0.5"),
        (shares_row(clc_311=30.0, clc_211=20.0), "shares sum to 50"),
        (shares_row(clc_311=0.8), "shares sum to 0.8"),
        (shares_row(), "shares sum to 0"),
    ],
)
def test_normalise_shares_flags_rows_not_adding_up(row, message):
    good = shares_row(clc_311=1.0)
    _, problems = labels.normalise_shares(pd.DataFrame([good, row], index=["good", "bad"]))
    assert problems["good"] == ""
    assert problems["bad"].startswith(message)
    assert "expected 1 or 100" in problems["bad"]


def test_normalise_shares_flags_negative():
    rows = pd.DataFrame(
        [shares_row(clc_311=1.0), shares_row(clc_311=1.1, clc_211=-0.1)], index=["ok", "neg"]
    )
    _, problems = labels.normalise_shares(rows)
    assert problems["ok"] == ""
    assert problems["neg"] == "negative share: clc_211=-0.1"


def test_normalise_shares_absent_or_empty_means_zero():
    # the real files may list only the classes present: absent keys and empty cells read as NaN
    rows = pd.DataFrame(
        {"clc_311": [60.0, np.nan], "clc_211": [np.nan, 0.25], "clc_512": [40.0, 0.75]},
        index=["percent", "fractions"],
    )
    fractions, problems = labels.normalise_shares(rows)
    assert (problems == "").all()
    assert not fractions.isna().any().any()
    assert fractions.loc["percent", "clc_311"] == pytest.approx(0.6)
    assert fractions.loc["percent", "clc_211"] == 0.0
    assert fractions.loc["fractions", "clc_311"] == 0.0
    assert fractions.loc["fractions", "clc_512"] == pytest.approx(0.75)


def test_normalise_shares_refuses_non_numeric_values_row_by_row():
    rows = pd.DataFrame(
        {
            "clc_311": [60.0, "lots", None, "", True, np.inf],
            "clc_211": [40.0, 40.0, "40", 40.0, 40.0, 40.0],
            "clc_512": [0.0, 0.0, 60.0, 60.0, 60.0, 60.0],
        },
        index=["ok", "word", "numeric_text", "blank", "bool", "inf"],
    )
    fractions, problems = labels.normalise_shares(rows)
    assert problems["ok"] == ""
    assert problems["word"] == "non-numeric share: clc_311='lots'"
    assert problems["numeric_text"] == ""  # a number written as text is still a number
    assert fractions.loc["numeric_text", "clc_211"] == pytest.approx(0.4)
    assert problems["blank"] == ""  # an empty value is an absent one
    assert problems["bool"] == "non-numeric share: clc_311=True"
    assert problems["inf"] == "non-numeric share: clc_311=inf"


def test_normalise_shares_tolerance_is_a_parameter():
    rows = pd.DataFrame([shares_row(clc_311=0.9)])
    assert labels.normalise_shares(rows)[1].iloc[0] != ""
    assert labels.normalise_shares(rows, tolerance=0.15)[1].iloc[0] == ""


def test_normalise_shares_rejects_unknown_column():
    rows = pd.DataFrame({"clc_311": [0.5], "clc_999": [0.5]})
    with pytest.raises(LabelError, match="clc_999"):
        labels.normalise_shares(rows)


def test_class_shares_sums_codes_into_poster_classes():
    rows = pd.DataFrame(
        [shares_row(clc_311=0.2, clc_312=0.2, clc_211=0.2, clc_231=0.15, clc_523=0.25)]
    )
    grouped = labels.class_shares(rows)
    assert list(grouped.columns) == list(CLASSES)
    assert grouped.loc[0, "forest"] == pytest.approx(0.4)
    assert grouped.loc[0, "agricultural"] == pytest.approx(0.35)
    assert grouped.loc[0, "water"] == pytest.approx(0.25)
    assert grouped.loc[0, "shrub"] == 0.0


def test_dominant_class_sums_level3_codes_before_choosing():
    rows = pd.DataFrame(
        [
            # forest split over 311 + 312 (0.4) beats any single agricultural code, and all
            # agricultural together (0.35)
            shares_row(clc_311=0.2, clc_312=0.2, clc_211=0.35, clc_512=0.25),
            # 0.3 in one code loses to 0.4 of agriculture spread over four codes
            shares_row(clc_311=0.3, clc_211=0.1, clc_231=0.1, clc_242=0.1, clc_243=0.1,
                       clc_512=0.3),
            shares_row(clc_523=0.9, clc_423=0.1),
            shares_row(clc_141=0.6, clc_211=0.4),
        ],
        index=["s1", "s2", "s3", "s4"],
    )
    dominant = labels.dominant_class(rows)
    assert dominant.name == "label"
    assert list(dominant.index) == ["s1", "s2", "s3", "s4"]
    assert labels.class_names(dominant) == ["forest", "agricultural", "water", "artificial"]


def test_multilabel_targets():
    rows = pd.DataFrame(
        [shares_row(clc_311=0.2, clc_312=0.2, clc_211=0.35, clc_512=0.15, clc_423=0.1)]
    )
    targets = labels.multilabel_targets(rows, threshold=0.15)
    assert list(targets.columns) == list(CLASSES)
    assert targets.dtypes.eq("int64").all()
    assert targets.iloc[0].to_dict() == {
        "artificial": 0,
        "agricultural": 1,
        "forest": 1,
        "shrub": 0,
        "bare": 0,
        "wetlands": 0,
        "water": 1,  # at the threshold counts as present
    }
    default = labels.multilabel_targets(rows)  # threshold 0.1
    assert default.loc[0, "wetlands"] == 1
    assert labels.multilabel_targets(rows, threshold=1.0).to_numpy().sum() == 0


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5, 10])
def test_multilabel_threshold_validation(threshold):
    rows = pd.DataFrame([shares_row(clc_311=1.0)])
    with pytest.raises(ValueError, match="threshold"):
        labels.multilabel_targets(rows, threshold=threshold)


def test_class_names():
    assert labels.class_names([0, 6, np.int64(2)]) == ["artificial", "water", "forest"]
