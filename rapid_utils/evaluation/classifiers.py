"""The one kNN and the one linear probe on frozen features, each with the name its tables show."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler, normalize

KNN_K = (5, 1)  # neighbours of the reported kNNs: k = 5 as Corley et al. 2023, and 1-NN
PROBE_C_GRID = 10.0 ** np.arange(-3, 4)  # inverse regularisation strengths tried by inner CV
PROBE_FIXED_C = 1.0  # with one label per class no inner CV is possible: sklearn's default C


def _check_features(train_x, train_y, test_x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    train_x, train_y, test_x = np.asarray(train_x), np.asarray(train_y), np.asarray(test_x)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x and test_x must be 2-D with equal feature counts, got "
                         f"{train_x.shape} and {test_x.shape}")
    if len(train_y) != len(train_x) or len(train_x) == 0:
        raise ValueError(f"need one label per training item and at least one item, got "
                         f"{len(train_x)} items and {len(train_y)} labels")
    return train_x, train_y, test_x


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                k: int = KNN_K[0]) -> np.ndarray:
    """Labels of `test_x` by a distance-weighted vote of its k nearest training items, on
    features centred by the training items' mean and scaled to unit length.

    Centring then L2-normalising (SimpleShot, Wang et al. 2019) puts every encoder on one
    footing: post-ReLU network features are all positive, so their raw cosine similarities
    crowd near 1 and a vote among them is nearly uniform, while per-band statistics spread
    widely. Euclidean distance between unit vectors ranks as cosine similarity does. Each
    neighbour votes with weight 1 / distance (scikit-learn's "distance"; an exact match
    decides alone), so with one label per class and k > 1 the nearest class still wins
    rather than the class that sorts first. k is capped at the number of training items.
    """
    train_x, train_y, test_x = _check_features(train_x, train_y, test_x)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    centre = train_x.mean(axis=0, dtype=np.float64)
    train_unit, test_unit = (normalize(x - centre) for x in (train_x, test_x))
    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_x)), weights="distance")
    return knn.fit(train_unit, train_y).predict(test_unit)


def knn_name(k: int) -> str:
    """How tables name `knn_predict` with `k` neighbours (fewer where fewer items train)."""
    return f"knn (k={k}, centred + L2, distance-weighted)"


def linear_probe_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                         seed: int = 0, C: float | None = None) -> np.ndarray:
    """Labels of `test_x` by a logistic-regression probe on standardised frozen features.

    With `C` None, C is picked from `PROBE_C_GRID` by stratified inner cross-validation
    (accuracy; folds = min(5, smallest class count), shuffled with `seed`) on the training
    labels only; equal scores go to the smaller C, the stronger regularisation. With a class of
    one training item no inner CV is possible and C is `PROBE_FIXED_C`. A given `C` is used as
    it is, with no search.
    """
    train_x, train_y, test_x = _check_features(train_x, train_y, test_x)
    _, counts = np.unique(train_y, return_counts=True)
    if len(counts) < 2:
        raise ValueError("a linear probe needs at least 2 classes among the training labels")
    probe = make_pipeline(StandardScaler(),
                          LogisticRegression(C=PROBE_FIXED_C if C is None else C, max_iter=5000))
    if C is None and counts.min() >= 2:
        folds = StratifiedKFold(n_splits=min(5, int(counts.min())), shuffle=True,
                                random_state=seed)
        probe = GridSearchCV(probe, {"logisticregression__C": PROBE_C_GRID}, cv=folds,
                             scoring="accuracy")
    return probe.fit(train_x, train_y).predict(test_x)


def probe_name(C: float | None = None) -> str:
    """How tables name `linear_probe_predict` with `C`."""
    if C is not None:
        return f"logistic probe (C={C:g})"
    low, high = np.log10(PROBE_C_GRID[[0, -1]]).astype(int)
    return (f"logistic probe (C by inner CV over 1e{low}..1e{high}; "
            f"C={PROBE_FIXED_C:g} with 1 label in a class)")


def score(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    """(accuracy, macro F1) with F1 averaged over the classes present in `y_true`."""
    present = np.unique(y_true)
    macro_f1 = f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
    return float(accuracy_score(y_true, y_pred)), float(macro_f1)
