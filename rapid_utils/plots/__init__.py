"""Figures (being split by family into submodules; corpus.py holds them all for now)."""

from rapid_utils.plots.corpus import *  # noqa: F403
