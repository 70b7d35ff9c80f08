"""Figures, one submodule per family. Each function takes data (index, xarray series, tables,
results) and returns a Figure.

Figures are built on `matplotlib.figure.Figure` rather than pyplot, so nothing stays open
in a global figure manager: notebooks show a figure by ending a cell with it, and
`save_figure` writes it. The package re-exports every figure, so `plots.plot_x` works
whichever submodule draws it.
"""

# ruff: noqa: F401  (the imports are the re-exports; one line per submodule)
from rapid_utils.plots.common import (
    CLASS_COLORS,
    CLASS_MARKERS,
    add_caption,
    class_styles,
    save_figure,
)
from rapid_utils.plots.corpus import (
    BAND_COLORS,
    EMBEDDED_CORPUS_NAME,
    REAL_CORPUS_NAME,
    corpus_name_of,
    dataset_name,
    plot_band_histograms,
    plot_chip_examples,
    plot_class_distribution,
    plot_class_phenology,
    plot_monthly_grid,
    plot_sample_locations,
    plot_split_sizes,
)
from rapid_utils.plots.realism import (
    plot_realism_chips,
    plot_realism_statistics,
    plot_within_counts,
)
from rapid_utils.plots.results import (
    ENCODER_COLORS,
    ENCODER_MARKERS,
    FIG5_SCENARIOS,
    SCENARIO_COLORS,
    SCENARIO_MARKERS,
    encoder_style,
    plot_accuracy_curves,
    plot_class_scores,
    plot_confusion,
    plot_label_efficiency,
    plot_precision_recall,
)
from rapid_utils.plots.training import (
    plot_byol_diagram,
    plot_embedding,
    plot_finetune_curves,
    plot_per_date_accuracy,
    plot_pretraining_history,
)
