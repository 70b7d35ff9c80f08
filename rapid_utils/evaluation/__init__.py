"""Evaluation of frozen features and trained networks, in one place.

- `features`: the one feature extractor (`extract_features`: encoders over a loader, leaving
  torch's global random state as it was), `recalibrate_batchnorm`, `resize_images`
  (evaluation at another size) and the imagestats baseline.
- `classifiers`: the one kNN (centred, L2-normalised, distance-weighted vote) and the one
  logistic probe, each with the name output tables give it (`knn_name`, `probe_name`), and `score`.
- `intervals`: means with Student-t intervals and the one difference of two results over
  seeds or repeats (`difference`: paired when they share them).
- `protocol`: the few-label protocol (subsets and `validation_subsets`, `evaluate_frozen`,
  `summarise`, `paired_differences`, `bootstrap_differences`, `write_table`).

The BYOL collapse guard, the label-efficiency study (notebook 06), the realism class signal and
the poster claims all evaluate through these. The names below are the package's API.
"""

from rapid_utils.evaluation.classifiers import (
    KNN_K,
    PROBE_C_GRID,
    PROBE_FIXED_C,
    knn_name,
    knn_predict,
    linear_probe_predict,
    probe_name,
    score,
)
from rapid_utils.evaluation.features import (
    IMAGESTATS,
    extract_features,
    imagestats_features,
    recalibrate_batchnorm,
    resize_images,
)
from rapid_utils.evaluation.intervals import Difference, difference, mean_interval
from rapid_utils.evaluation.protocol import (
    EVALUATIONS,
    LABELS_PER_CLASS,
    RECORD_COLUMNS,
    FewLabelSubset,
    FrozenPredictions,
    bootstrap_differences,
    evaluate_frozen,
    few_label_subsets,
    paired_differences,
    summarise,
    validation_subsets,
    write_table,
)

__all__ = [
    "EVALUATIONS", "IMAGESTATS", "KNN_K", "LABELS_PER_CLASS", "PROBE_C_GRID", "PROBE_FIXED_C",
    "RECORD_COLUMNS", "Difference", "FewLabelSubset", "FrozenPredictions",
    "bootstrap_differences", "difference", "evaluate_frozen", "extract_features",
    "few_label_subsets", "imagestats_features", "knn_name", "knn_predict",
    "linear_probe_predict", "mean_interval", "paired_differences", "probe_name",
    "recalibrate_batchnorm", "resize_images", "score", "summarise", "validation_subsets",
    "write_table",
]
