"""How much of the per-class NDVI gap of the realism table is class mixing inside a site.

EuroSAT-MS chips were picked to show one class; an embedded site is labelled by its dominant
class, and its other classes' pixels enter that class's NDVI quantiles. This check measures
the NDVI rows twice on the same rendered sites as notebook 07 (seed, site count, date, L1C lift
and pixel samples as `realism.ndvi_rows`): over all pixels of a site, as the table does, and
over only its 10 m pixels wholly of the dominant class. It also prints how pure the sites
are and how much of them is snow. It is a diagnosis, not a calibration: the table and the
generator are left as they are.

    python experiments/realism_mixing.py [--sites 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from rapid_utils import labels, realism
from rapid_utils.chip_statistics import (
    QUANTILES,
    bootstrap_quantile_tolerance,
    ndvi,
    pixel_sample,
    pooled_quantiles,
)
from rapid_utils.corpus import layout, synthetic

PURE = 1 - 1e-6  # a 10 m pixel is pure when all its 3 m pixels are of the site's class
SNOW_BLUE = 0.3  # blue surface reflectance above which a pixel is snow (or cloud)


def rendered_with_purity(n_sites: int, seed: int) -> tuple[realism.ChipSet, np.ndarray,
                                                            np.ndarray]:
    """The rendered chips of notebook 07, each 10 m pixel's share of the site's dominant class
    (N, S, S), and each site's dominant share of its area (N,)."""
    images, classes, purity, shares = [], [], [], []
    for image, code_map in realism.render_sites(n_sites, seed, layout.SITE_SIZE_PX):
        clc_shares = pd.DataFrame([synthetic.label_shares(code_map)])
        dominant = int(labels.dominant_class(clc_shares).iloc[0])
        poster = np.vectorize(labels.CLC7.get)(code_map)
        images.append(image)
        classes.append(labels.CLASSES[dominant])
        purity.append((poster == labels.CLASSES[dominant]).astype(np.float32)[None])
        shares.append(float(labels.class_shares(clc_shares).iloc[0, dominant]) / 100)
    chipset = realism.ChipSet("embedded (rendered)",
                              realism.resample_to_gsd(np.stack(images), layout.PIXEL_SIZE_M),
                              np.array(classes, dtype=object), layout.PIXEL_SIZE_M,
                              layout.SITE_SIZE_PX)
    purity_10m = realism.resample_to_gsd(np.stack(purity), layout.PIXEL_SIZE_M)[:, 0]
    return chipset, purity_10m, np.array(shares)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real-s2", default=realism.REAL_S2_DEFAULT)
    args = parser.parse_args(argv)

    embedded, purity, shares = rendered_with_purity(args.sites, args.seed)
    labelled, pool = realism.real_chips(realism.real_s2_dir(args.real_s2), side=embedded.side,
                                        seed=args.seed)
    offsets = realism.path_offsets(labelled, pool)
    site_ndvi = ndvi(embedded.images + offsets[None, :, None, None])
    every_pixel = pixel_sample(site_ndvi, seed=args.seed)
    pure_pixels = pixel_sample(np.where(purity >= PURE, site_ndvi, np.nan), seed=args.seed)
    real_ndvi = pixel_sample(ndvi(labelled.images), seed=args.seed)

    rows = []
    for name in realism.shared_classes(embedded, labelled):
        mine, real = embedded.classes == name, real_ndvi[labelled.classes == name]
        tolerance = bootstrap_quantile_tolerance(real, int(mine.sum()), seed=args.seed)
        for k, q in enumerate(QUANTILES):
            real_value = pooled_quantiles(real)[k]
            as_table = pooled_quantiles(every_pixel[mine])[k]
            pure_only = pooled_quantiles(pure_pixels[mine])[k]
            rows.append({
                "class": name, "quantile": f"q{q:02d}", "sites": int(mine.sum()),
                "dominant_share_median": float(np.median(shares[mine])),
                "pure_pixel_share": float(np.mean(purity[mine] >= PURE)),
                "snow_pixel_share": float(np.mean(embedded.images[mine, 0] > SNOW_BLUE)),
                "real": real_value, "embedded_all_pixels": as_table,
                "embedded_pure_pixels": pure_only, "tolerance": float(tolerance[k]),
                "within_all": abs(as_table - real_value) <= tolerance[k],
                "within_pure": abs(pure_only - real_value) <= tolerance[k],
            })
    table = pd.DataFrame(rows)
    print(f"NDVI rows on {args.sites} rendered sites (seed {args.seed}), lifted to L1C by "
          f"offsets {np.round(offsets, 4).tolist()}; pure: a 10 m pixel wholly of the class")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"within: {int(table['within_all'].sum())} of {len(table)} over all pixels, "
          f"{int(table['within_pure'].sum())} over pure pixels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
