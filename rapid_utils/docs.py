"""HTML documentation of a run: every executed notebook, the figures and the results table.

`rapid-utils docs --profile quick` (`make docs`) renders `runs/{profile}/notebooks/*.ipynb`
with nbconvert into `runs/{profile}/html/` and writes an `index.html` linking them; with
`--publish DIR` (the Makefile's `docs/{profile}/notebooks`) it also copies a reader's
selection there (`publish_docs`), so the executed notebooks can be read without a run.
"""

from __future__ import annotations

import html
import os
import shutil
from pathlib import Path

import nbconvert
import nbformat
import pandas as pd

from rapid_utils import paths
from rapid_utils.io import atomic_path


def render_notebooks(notebooks: Path, out_dir: Path) -> list[Path]:
    """Convert each executed notebook to a standalone HTML page; return the pages."""
    exporter = nbconvert.HTMLExporter()
    pages = []
    for source in sorted(Path(notebooks).glob("*.ipynb")):
        body, _ = exporter.from_notebook_node(nbformat.read(source, as_version=4))
        page = Path(out_dir) / f"{source.stem}.html"
        with atomic_path(page) as tmp:
            tmp.write_text(body, encoding="utf-8")
        pages.append(page)
    return pages


def build_docs(profile: str) -> Path:
    """Render a profile's executed notebooks and write the index page; return its path."""
    runs, figures = paths.runs_dir(profile), paths.figures_dir(profile)
    notebooks = runs / "notebooks"
    if not notebooks.is_dir() or not any(notebooks.glob("*.ipynb")):
        raise FileNotFoundError(
            f"no executed notebooks in {notebooks}: run `rapid-utils reproduce --profile "
            f"{profile}` (make reproduce PROFILE={profile}) first"
        )
    out_dir = runs / "html"
    pages = render_notebooks(notebooks, out_dir)
    index = out_dir / "index.html"
    with atomic_path(index) as tmp:
        tmp.write_text(_index_page(profile, pages, figures, out_dir), encoding="utf-8")
    return index


FINETUNING_NOTEBOOK = "04_finetuning"
PUBLISHED_FINETUNING_RUNS = 1  # of a profile's many fine-tuning runs, the first is published


def publish_docs(profile: str, out_dir: str | Path) -> list[Path]:
    """Copy `build_docs`' pages of `profile` to `out_dir`: every notebook's page but of the
    fine-tuning runs (one per scenario and seed, alike but for their numbers) only the first
    in name order; pages there from an earlier run are replaced, others removed. Returns the
    copies. Call `build_docs` first."""
    rendered = paths.runs_dir(profile) / "html"
    pages = sorted(rendered.glob("*.html"))
    if not pages:
        raise FileNotFoundError(f"no rendered notebooks in {rendered}: run `rapid-utils docs "
                                f"--profile {profile}` first")
    finetuning = [p for p in pages if p.stem.startswith(FINETUNING_NOTEBOOK)]
    chosen = [p for p in pages if p not in finetuning and p.name != "index.html"]
    chosen += finetuning[:PUBLISHED_FINETUNING_RUNS]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in set(out_dir.glob("*.html")) - {out_dir / p.name for p in chosen}:
        stale.unlink()
    copies = []
    for page in sorted(chosen):
        with atomic_path(out_dir / page.name) as tmp:
            shutil.copyfile(page, tmp)
        copies.append(out_dir / page.name)
    return copies


def _index_page(profile: str, pages: list[Path], figures: Path, out_dir: Path) -> str:
    def link(target: Path) -> str:
        return html.escape(os.path.relpath(target, out_dir))

    parts = [f"<!doctype html><meta charset='utf-8'><title>rapidai4eo-byol: {profile}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
             "img{max-width:100%}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px}</style>",
             f"<h1>rapidai4eo-byol, profile <code>{html.escape(profile)}</code></h1>",
             "<h2>Executed notebooks</h2><ul>"]
    parts += [f"<li><a href='{link(p)}'>{html.escape(p.stem)}</a></li>" for p in pages]
    parts.append("</ul>")
    table = figures / "results.csv"
    if table.is_file():
        shown = pd.read_csv(table).drop(columns=["seeds"], errors="ignore")
        parts += ["<h2>Results (test accuracy, mean and std over seeds)</h2>",
                  shown.to_html(index=False, float_format="{:.3f}".format)]
    poster = sorted(figures.glob("fig*.png"))
    if poster:
        parts.append("<h2>Poster figures</h2>")
        parts += [f"<h3>{html.escape(f.stem)}</h3><img src='{link(f)}' alt='{f.stem}'>"
                  for f in poster]
    return "\n".join(parts)
