"""rapid_utils: the logic of the rapidai4eo-byol compendium (data, labels, models, plots)."""

__version__ = "0.1.0"
