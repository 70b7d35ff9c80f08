"""How the synthetic corpus looks: spectral signatures and the strengths of its textures,
relief, noise and snow.

These are the generator's calibrated constants, kept apart from `synthetic` (which draws
sites from them) so that what was tuned sits in one place. They were calibrated on the real
chips' statistics alone (`realism`; README "The embedded corpus against real imagery"),
never on what a model scores. Changing any of them changes the pixels drawn for a seed, so
`synthetic.GENERATOR_VERSION` is bumped with them.
"""

from __future__ import annotations

import numpy as np

# Reflectance (blue, green, red, nir) in a dormant and a full-canopy state, and the seasonal
# cycle that moves between them. Values follow typical surface reflectance of each cover.
SOIL = (0.045, 0.075, 0.095, 0.20)
CANOPY = (0.016, 0.05, 0.026, 0.50)
SIGNATURES: dict[str, tuple[tuple[float, ...], tuple[float, ...], str]] = {
    "urban": ((0.065, 0.095, 0.11, 0.14), (0.065, 0.095, 0.11, 0.14), "none"),
    "crop": (SOIL, CANOPY, "crop"),
    "grass": ((0.035, 0.06, 0.05, 0.24), (0.02, 0.065, 0.03, 0.42), "grass"),
    "orchard": ((0.05, 0.08, 0.10, 0.22), (0.025, 0.06, 0.03, 0.35), "deciduous"),
    "broadleaf": ((0.03, 0.045, 0.045, 0.20), (0.016, 0.045, 0.024, 0.44), "deciduous"),
    "conifer": ((0.016, 0.022, 0.02, 0.18), (0.016, 0.028, 0.02, 0.27), "evergreen"),
    "mixed": ((0.02, 0.035, 0.028, 0.20), (0.016, 0.045, 0.022, 0.34), "deciduous"),
    "shrub": ((0.05, 0.07, 0.095, 0.17), (0.04, 0.06, 0.07, 0.21), "grass"),
    "steppe": ((0.05, 0.075, 0.085, 0.18), (0.035, 0.06, 0.05, 0.25), "grass"),
    "sand": ((0.11, 0.17, 0.22, 0.25), (0.11, 0.17, 0.22, 0.25), "none"),
    "rock": ((0.08, 0.10, 0.12, 0.16), (0.08, 0.10, 0.12, 0.16), "none"),
    "sparse": ((0.07, 0.09, 0.11, 0.16), (0.05, 0.08, 0.08, 0.20), "grass"),
    "burnt": ((0.03, 0.04, 0.05, 0.08), (0.04, 0.05, 0.06, 0.12), "grass"),
    "snow": ((0.62, 0.63, 0.62, 0.52), (0.55, 0.56, 0.55, 0.45), "none"),
    "marsh": ((0.03, 0.05, 0.05, 0.12), (0.02, 0.05, 0.03, 0.30), "wet"),
    "saline": ((0.20, 0.22, 0.23, 0.20), (0.20, 0.22, 0.23, 0.20), "none"),
    "water": ((0.03, 0.026, 0.02, 0.012), (0.028, 0.03, 0.024, 0.02), "grass"),
}
CODE_SIGNATURE = {
    **{code: "urban" for code in (111, 112, 121, 122, 123, 124, 131, 132, 133)},
    141: "grass",
    142: "grass",
    **{code: "crop" for code in (211, 212, 213, 241, 242)},
    221: "orchard",
    222: "orchard",
    223: "orchard",
    244: "orchard",
    231: "grass",
    243: "grass",
    311: "broadleaf",
    312: "conifer",
    313: "mixed",
    321: "steppe",
    322: "shrub",
    323: "shrub",
    324: "shrub",
    331: "sand",
    332: "rock",
    333: "sparse",
    334: "burnt",
    335: "snow",
    411: "marsh",
    412: "marsh",
    421: "marsh",
    422: "saline",
    423: "marsh",
    **{code: "water" for code in (511, 512, 521, 522, 523)},
}
ROAD = np.array([0.07, 0.08, 0.09, 0.11])
CLOUD = np.array([0.38, 0.38, 0.39, 0.41])
SNOW = np.array([0.70, 0.70, 0.68, 0.58])

# Multiplicative brightness textures (strength, power-spectrum slope; see `textures`) per
# group of signatures; tree crowns add a fine pattern of CROWN_STRENGTH under canopies.
CANOPY_SIGNATURES = ("broadleaf", "conifer", "mixed", "orchard")
SMOOTH_SIGNATURES = ("water", "saline")
OPEN_SIGNATURES = ("sand", "rock", "sparse", "burnt", "snow")
CANOPY_TEXTURE = (0.095, -2.0)
SMOOTH_TEXTURE = (0.08, -3.0)
OPEN_TEXTURE = (0.12, -2.0)
DEFAULT_TEXTURE = (0.08, -2.0)
CROWN_STRENGTH = 0.03
WITHIN_CLASS_SPREAD = (0.2, 0.2, 0.2, 0.1)  # relative sd per band: soil colour, stand age
PARCEL_BRIGHTNESS = (0.7, 1.3)  # uniform range of one field's brightness
# Relief and soil moisture: a site-wide power-law field, stronger in the visible bands,
# scaled per site by a uniform draw in RELIEF_SCALE.
RELIEF_STRENGTH = (0.27, 0.22, 0.23, 0.034)
RELIEF_SLOPE = -2.5
RELIEF_SCALE = (0.5, 1.5)
ILLUMINATION_SD = 0.05  # relative, per date and band
SENSOR_NOISE = (0.0012, 0.0007, 0.00055, 0.0025)  # reflectance sd per band
SNOW_PROBABILITY = 0.5  # per winter date of a northern site
SNOW_SMOOTHING_PX = 4.5
