"""PyTorch access to the corpus: a Dataset per corpus kind (GeoTIFF folder, packed store, chips
corpus), `open_dataset` to pick one, and the per-band statistics of a GeoTIFF corpus or store."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from rapid_utils import labels, splits
from rapid_utils.bandstats import BandStats, PixelSums, normalise
from rapid_utils.corpus import chips, layout
from rapid_utils.corpus.index import dates_of
from rapid_utils.corpus.reader import (
    CorpusError,
    DateSelection,
    available_dates,
    corpus_size,
    draw_chips,
    read_raster,
    sample_chips,
    select_dates,
)
from rapid_utils.corpus.store import PackedStore, is_store

log = logging.getLogger(__name__)

DATE_SAMPLING = ("random", "first", "spread", "seasons", "all", "pair")
"""How an item picks its dates: one at random (training), the first, one fixed per site spread
over the year (`spread`, a hash of the sample id: no RNG drawn), one per season (`seasons`),
every date (`all`), or two different dates (`pair`, temporal positives)."""
T = TypeVar("T")
MAX_REPLACEMENTS = 10  # replacements tried for an unreadable sample before giving up
MULTI_DATE = ("seasons", "all")  # items hold a (T, 4, H, W) series
STATS_DATES_PER_SITE = 4  # dates drawn per site for band statistics
STATS_DATES: DateSelection = "monthly"  # the dates band statistics are drawn from
SEASON_MONTHS = (1, 4, 7, 10)


def band_stats_recipe(n_sites: int, dates_per_site: int, dates: DateSelection, seed: int) -> str:
    """How `compute_band_stats` draws its sample, recorded with the statistics."""
    return f"sites n_sites={n_sites} dates_per_site={dates_per_site} dates={dates} seed={seed}"


def compute_band_stats(
    root: str | Path,
    sites: pd.DataFrame,
    n_sites: int = 256,
    dates_per_site: int = STATS_DATES_PER_SITE,
    dates: DateSelection = STATS_DATES,
    seed: int = 0,
    progress: bool = True,
    split_fingerprint: str = "",
) -> BandStats:
    """Per-band mean/std over valid pixels of a seeded sample of sites and dates.

    Pass training sites only, so validation and test data do not leak into normalisation, and
    the fingerprint of the split they come from, which the statistics then carry.
    `root` may be a packed store: the same chips are drawn, so the statistics are the same.
    """
    sums = PixelSums()
    sites_seen = set()
    sample_ids = sites["sample_id"].tolist()
    if is_store(root):
        store = PackedStore(root)
        drawn = draw_chips(sample_ids, n_sites, dates_per_site, seed,
                           lambda sample_id: select_dates(store.dates, dates, sample_id),
                           store.read_chip, progress, desc="band statistics")
    else:
        drawn = sample_chips(Path(root), sample_ids, n_sites, dates_per_site, dates, seed,
                             progress, desc="band statistics")
    for sample_id, chip in drawn:
        sums.add(chip)
        sites_seen.add(sample_id)
    if not sums.count.all():
        raise ValueError("no valid pixels to compute band statistics from")
    mean, std = sums.mean_std()
    return BandStats(tuple(mean.tolist()), tuple(std.tolist()), len(sites_seen),
                     int(sums.count[0]),
                     split_fingerprint, recipe=band_stats_recipe(n_sites, dates_per_site, dates,
                                                                 seed))


def normalise_chip(chip: np.ma.MaskedArray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A masked (4, H, W) chip in stored units, normalised by band; nodata pixels become 0 (the
    band mean). Every corpus kind's Dataset normalises through this one function."""
    return normalise(torch.from_numpy(chip.data.astype(np.float32, copy=False)), mean, std,
                     torch.from_numpy(np.ma.getmaskarray(chip)))


class _ChipDataset(Dataset):
    """What the GeoTIFF and store Datasets share: targets, normalisation and date sampling.

    Subclasses say which dates a site has (`site_dates`) and how one chip is read
    (`read_chip`, raw values with a nodata mask), so both give the same items.
    """

    gsd_m: float | None = layout.PIXEL_SIZE_M  # ground sampling distance of the images, m

    def __init__(
        self,
        index: pd.DataFrame,
        band_stats: BandStats,
        dates: DateSelection,
        date_sampling: str,
        target: str,
        multilabel_threshold: float,
    ) -> None:
        if date_sampling not in DATE_SAMPLING:
            raise ValueError(f"date_sampling must be one of {DATE_SAMPLING}, got {date_sampling!r}")
        if target not in ("dominant", "multilabel"):
            raise ValueError(f"target must be 'dominant' or 'multilabel', got {target!r}")
        if index.empty:
            raise ValueError("the dataset's index has no sites")
        self.sample_ids = index["sample_id"].tolist()
        shares = index[list(labels.SHARE_COLUMNS)].reset_index(drop=True)
        if target == "dominant":
            self.targets = torch.tensor(labels.dominant_class(shares).to_numpy())
        else:
            multi = labels.multilabel_targets(shares, multilabel_threshold).to_numpy()
            self.targets = torch.tensor(multi, dtype=torch.float32)
        self.dates = dates
        self.date_sampling = date_sampling
        self.mean = torch.tensor(band_stats.mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(band_stats.std, dtype=torch.float32)[:, None, None]
        self._site_dates: dict[str, list[dt.date]] = {}
        self.unreadable: set[str] = set()  # sample ids already warned about (this process)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def available(self, sample_id: str) -> list[dt.date]:
        """All dates a site has in this corpus."""
        raise NotImplementedError

    def read_chip(self, sample_id: str, date: dt.date) -> np.ma.MaskedArray:
        """One raw (4, H, W) chip, masked where nodata."""
        raise NotImplementedError

    def site_dates(self, sample_id: str) -> list[dt.date]:
        """The selected dates of a site (listed once, then cached)."""
        if sample_id not in self._site_dates:
            available = self.available(sample_id)
            self._site_dates[sample_id] = select_dates(available, self.dates, sample_id)
        return self._site_dates[sample_id]

    def load_chip(self, sample_id: str, date: dt.date) -> torch.Tensor:
        """One normalised (4, H, W) chip; nodata pixels become 0 (the band mean)."""
        return normalise_chip(self.read_chip(sample_id, date), self.mean, self.std)

    def choose_dates(self, sample_id: str, generator: torch.Generator | None = None
                     ) -> list[dt.date]:
        """The dates of one item as `date_sampling` says; random draws come from `generator`
        (an `EpochSampler` key's), or torch's global RNG when the item was indexed plainly."""
        site_dates = self.site_dates(sample_id)
        if self.date_sampling == "all":
            return site_dates
        if self.date_sampling == "first":
            return site_dates[:1]
        if self.date_sampling == "spread":
            position = splits.unit_hash([sample_id], 0, "evaluation date")[0]
            return [site_dates[int(position * len(site_dates))]]
        if self.date_sampling == "seasons":
            return seasonal_dates(site_dates)
        if self.date_sampling == "pair":
            # [i, i] when the site has a single date
            order = torch.randperm(len(site_dates), generator=generator).tolist() * 2
            return [site_dates[order[0]], site_dates[order[1]]]
        return [site_dates[int(torch.randint(len(site_dates), (), generator=generator))]]

    def __getitem__(self, key: int | ItemKey) -> dict:
        item, generator = parse_key(key)
        item, chosen, images, unreadable = self._readable_item(item, generator)
        sample_id = self.sample_ids[item]
        single = self.date_sampling not in MULTI_DATE
        item_dict = {
            "image": images[0] if single else torch.stack(images),
            "label": self.targets[item],
            "sample_id": sample_id,
            "date": chosen[0].isoformat() if single else [d.isoformat() for d in chosen],
            "unreadable": unreadable,
        }
        if self.date_sampling == "pair":
            item_dict |= {"image2": images[1], "date2": chosen[1].isoformat()}
        return item_dict

    def _readable_item(self, item: int, generator: torch.Generator | None
                       ) -> tuple[int, list[dt.date], list[torch.Tensor], str]:
        """The item's dates and images, or a replacement's (`read_or_replace`)."""
        def read(position: int) -> tuple[list[dt.date], list[torch.Tensor]]:
            sample_id = self.sample_ids[position]
            chosen = self.choose_dates(sample_id, generator)
            return chosen, self.load_images(sample_id, chosen)

        item, (chosen, images), unreadable = read_or_replace(item, read, self.sample_ids,
                                                             self.unreadable)
        return item, chosen, images, unreadable

    def load_images(self, sample_id: str, dates: list[dt.date]) -> list[torch.Tensor]:
        """The item's images, one per date."""
        return [self.load_chip(sample_id, date) for date in dates]


def read_or_replace(item: int, read: Callable[[int], T], sample_ids: Sequence[str],
                    warned: set[str]) -> tuple[int, T, str]:
    """`read(item)`, or, when that raises a `CorpusError`, `read` of a replacement item.

    A truncated, missing or wrong-size raster of one sample must not end a run of hours: the
    sample is replaced by another, drawn deterministically from the sample and the attempt.
    Returns the item read, what `read` gave, and one "sample_id: reason" line per failed read
    ("" when none failed; the training loops count these and stop past
    `train.UNREADABLE_SHARE` of all reads). Each sample is warned about once (`warned`).
    """
    problems = []
    for attempt in range(MAX_REPLACEMENTS + 1):
        sample_id = sample_ids[item]
        try:
            return item, read(item), "\n".join(problems)
        except CorpusError as error:
            # one line per failed read: the loops split the text on newlines
            problems.append(f"{sample_id}: {' '.join(str(error).split())}")
            if sample_id not in warned:
                warned.add(sample_id)
                log.warning("unreadable sample %s, replaced by another: %s", sample_id, error)
            step = splits.unit_hash([f"{sample_id}#{attempt}"], 0, "replacement")[0]
            item = (item + 1 + int(step * (len(sample_ids) - 1))) % len(sample_ids)
    raise CorpusError(f"{MAX_REPLACEMENTS + 1} samples in a row could not be read: "
                      + "; ".join(problems))


def seasonal_dates(dates: list[dt.date]) -> list[dt.date]:
    """One date per season: the first date of January, April, July and October of the first
    year that has them all; else four dates evenly spaced through the series (or all, if fewer).

    Evaluating on these rather than on each site's first date (early January: snow, leaf-off)
    keeps the accuracy from depending on one winter scene.
    """
    for year in sorted({date.year for date in dates}):
        chosen = [next((d for d in dates if (d.year, d.month) == (year, month)), None)
                  for month in SEASON_MONTHS]
        if all(chosen):
            return chosen
    if len(dates) <= len(SEASON_MONTHS):
        return list(dates)
    step = len(dates) / len(SEASON_MONTHS)
    return [dates[int(step * k)] for k in range(len(SEASON_MONTHS))]


ItemKey = tuple[int, int]
"""What an `EpochSampler` hands a Dataset: (item, seed of the item's random draws)."""


def parse_key(key: int | ItemKey) -> tuple[int, torch.Generator | None]:
    """The item of a Dataset key and the generator of its random draws (None: a plain index,
    drawn from torch's global RNG)."""
    if isinstance(key, tuple):
        item, draw_seed = key
        return int(item), torch.Generator().manual_seed(int(draw_seed))
    return int(key), None


class EpochSampler(Sampler[ItemKey]):
    """A seeded order of a Dataset's items for each epoch, with a seed for each item's draws.

    Torch's samplers leave an item's random dates to the RNG of whichever process reads it, so
    the dates depended on `num_workers` and a DataLoader had to be rebuilt (its workers
    restarted) to reseed them each epoch. Here the sampler, in the main process, draws them:
    epoch `e` of seed `s` is the same order and the same dates for any number of workers, on
    resuming, and from one persistent DataLoader (`set_epoch` as for DistributedSampler).
    `shuffle=False` keeps the items in order. `num_samples` larger than the dataset repeats
    whole shuffled passes. With `world_size` > 1 each rank takes every `world_size`-th key of
    the epoch's order, cut (`drop_last`) or wrapped to a multiple of `world_size`.
    """

    def __init__(self, n_items: int, seed: int, shuffle: bool = True, num_samples: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = False) -> None:
        if n_items == 0:
            raise ValueError("EpochSampler needs at least one item")
        self.n_items, self.seed, self.shuffle = n_items, seed, shuffle
        self.num_samples = max(num_samples, n_items)
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order and draws the next iteration gives."""
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples) % self.n_items
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        passes = -(-self.num_samples // self.n_items)
        order = torch.cat([torch.randperm(self.n_items, generator=generator)
                           for _ in range(passes)])
        return order[: self.num_samples]

    def _keys(self) -> list[ItemKey]:
        order = self._order()
        first_seed = int(torch.randint(2**62, (), generator=torch.Generator().manual_seed(
            self.seed + self.epoch + 7_919)))
        keys = [(int(item), first_seed + position) for position, item in enumerate(order)]
        if self.world_size > 1:
            usable = len(keys) // self.world_size * self.world_size
            keys = keys[:usable] if self.drop_last else (
                keys + keys[: (-len(keys)) % self.world_size])
        return keys[self.rank :: self.world_size]

    def __iter__(self):
        return iter(self._keys())

    def __len__(self) -> int:
        if self.world_size == 1:
            return self.num_samples
        if self.drop_last:
            return self.num_samples // self.world_size
        return -(-self.num_samples // self.world_size)


def keep_batch(batch: list[dict] | dict) -> dict:
    """DataLoader `collate_fn`: collate a list of items; hand on a batch already collated.

    Torch collates items by copying each image into a new batch tensor; the store Dataset's
    `__getitems__` instead reads a batch's chunks straight into one tensor (measured 2x faster
    in one process), which the loader must pass on unchanged.
    """
    return default_collate(batch) if isinstance(batch, list) else batch


class PlanetFusionDataset(_ChipDataset):
    """Planet Fusion chips of indexed sites, read from the corpus GeoTIFFs, with their targets.

    Each item is a dict: `image` (float32, normalised; (4, H, W) for one date or
    (T, 4, H, W) with `date_sampling` "all" or "seasons"), `label` (dominant class index, or a 0/1
    vector of 7 for `target="multilabel"`), `sample_id` and `date` (ISO string(s)).
    Nodata/NaN pixels are set to 0 after normalisation, i.e. to the band mean.
    `date_sampling="pair"` adds `image2` and `date2`, a second, different date of the same site
    (the same one only if the site has a single date): temporal positives for BYOL.
    Random dates are drawn from the key's seed (`EpochSampler`), so they are repeatable.
    """

    def __init__(
        self,
        root: str | Path,
        index: pd.DataFrame,
        band_stats: BandStats,
        dates: DateSelection = "monthly",
        date_sampling: str = "random",
        target: str = "dominant",
        multilabel_threshold: float = 0.1,
        nodata: float | None = None,
    ) -> None:
        super().__init__(index, band_stats, dates, date_sampling, target, multilabel_threshold)
        self.root = Path(root)
        self.nodata = nodata
        # every raster is checked against the corpus's size: a wrong-size one is then an
        # unreadable sample (replaced, recorded) instead of a collate error deep in a loader
        self.size = corpus_size(self.root)
        self.indexed_dates = dates_of(index)  # listed once by build_index, when it checked

    def available(self, sample_id: str) -> list[dt.date]:
        if self.indexed_dates is not None:
            return self.indexed_dates[sample_id]
        return available_dates(self.root, sample_id)

    def read_chip(self, sample_id: str, date: dt.date) -> np.ma.MaskedArray:
        return read_raster(layout.raster_path(self.root, sample_id, date), nodata=self.nodata,
                           size=self.size)


class PackedStoreDataset(_ChipDataset):
    """The same items as `PlanetFusionDataset`, read from a packed store (`corpus.store`).

    Same sites, dates, random draws and values, so training gives identical results from either.
    One item reads only its dates' chunks; a batch (`__getitems__`, with a DataLoader whose
    `collate_fn` is `keep_batch`) reads all of its chunks straight into one tensor. With
    `raw=True` images stay uint16 (what the store holds, half the bytes of float32) and
    `normalise_batch` normalises whole batches on the device they are on (e.g. the GPU), so
    CPU workers only read.
    """

    def __init__(
        self,
        store: str | Path | PackedStore,
        index: pd.DataFrame,
        band_stats: BandStats,
        dates: DateSelection = "monthly",
        date_sampling: str = "random",
        target: str = "dominant",
        multilabel_threshold: float = 0.1,
        raw: bool = False,
    ) -> None:
        super().__init__(index, band_stats, dates, date_sampling, target, multilabel_threshold)
        self.store = store if isinstance(store, PackedStore) else PackedStore(store)
        self.raw = raw
        for sample_id in self.sample_ids:
            self.store.row(sample_id)  # fail now, naming the site, not in a worker later

    def available(self, sample_id: str) -> list[dt.date]:
        return list(self.store.dates)

    def read_chip(self, sample_id: str, date: dt.date) -> np.ma.MaskedArray:
        return self.store.read_chip(sample_id, date)

    def load_images(self, sample_id: str, dates: list[dt.date]) -> list[torch.Tensor]:
        stack = torch.from_numpy(self.store.read(sample_id, [self.store.date_position(d)
                                                             for d in dates]))
        return list(stack if self.raw else self.normalise_batch(stack))

    def __getitems__(self, keys: list[int | ItemKey]) -> list[dict] | dict:
        """A batch, collated as `keep_batch(keys)` would, from one read of all its chunks.

        The same dates and values as `self[key]` per key. When a chunk of the batch cannot be
        read (missing, torn), the batch is read again item by item, so only the damaged samples
        are replaced (and recorded), as with `self[key]`.
        """
        if self.date_sampling in MULTI_DATE:  # series: items, collated by the loader
            return [self[key] for key in keys]
        parsed = [parse_key(key) for key in keys]
        items = [item for item, _ in parsed]
        sample_ids = [self.sample_ids[item] for item in items]
        chosen = [self.choose_dates(self.sample_ids[item], generator) for item, generator in parsed]
        times = [[self.store.date_position(date) for date in dates] for dates in chosen]
        # Date-major memory, so `image` and `image2` are each one contiguous block.
        by_date = np.empty((len(times[0]), len(items), *self.store.shape[2:]), dtype=np.uint16)
        try:
            self.store.read_batch(sample_ids, times, out=by_date.transpose(1, 0, 2, 3, 4))
        except CorpusError as error:
            log.warning("a batched read of %s failed (%s); reading its %d samples one by one",
                        self.store.url, " ".join(str(error).split()), len(items))
            return [self[key] for key in keys]  # collated by the loader (`keep_batch`)
        stack = torch.from_numpy(by_date)
        images = stack if self.raw else self.normalise_batch(stack)
        batch = {
            "image": images[0],
            "label": self.targets[items],
            "sample_id": sample_ids,
            "date": [dates[0].isoformat() for dates in chosen],
            "unreadable": [""] * len(items),
        }
        if self.date_sampling == "pair":
            batch |= {"image2": images[1], "date2": [dates[1].isoformat() for dates in chosen]}
        return batch

    def normalise_batch(self, raw: torch.Tensor) -> torch.Tensor:
        """Normalised float32 images from raw uint16 ones (..., 4, H, W), on their device.

        The same arithmetic as `load_chip`, so CPU items and device-normalised batches agree.
        """
        values = raw.to(torch.float32)
        nodata = self.store.nodata
        return normalise(values, self.mean, self.std,
                         None if nodata is None else values == nodata)


class ChipsDataset(Dataset):
    """Chips of a chips corpus with their class: the chips counterpart of PlanetFusionDataset.

    Items are dicts: `image` (float32 (4, S, S), normalised; (1, 4, S, S) with
    a multi-date `date_sampling`), `label` (class index, -1 for unlabelled chips), `sample_id` and
    `date` ("", chips have none; every date sampling reads the one chip).
    `date_sampling="pair"` adds `image2`, the same chip again:
    with a single date, BYOL's two positives differ by augmentation only. Nodata pixels become
    0 after normalisation (the band mean), before resizing. Each chip is read and normalised as
    its `source` says (an index without that column holds labelled chips only).
    """

    def __init__(self, spec: chips.ChipsSpec, index: pd.DataFrame, band_stats: BandStats,
                 date_sampling: str = "random") -> None:
        if date_sampling not in DATE_SAMPLING:
            raise ValueError(f"date_sampling must be one of {DATE_SAMPLING}, got {date_sampling!r}")
        if index.empty:
            raise ValueError("the dataset's index has no chips")
        self.spec = spec
        self.paths = index["path"].tolist()
        self.gsd_m = chips.chip_gsd_m(self.paths[0], spec)  # of the images (chips in one folder)
        self.sample_ids = index["sample_id"].tolist()
        self.sources = chips.sources_of(index)
        self.targets = torch.tensor(index["label"].to_numpy(), dtype=torch.int64)
        self.date_sampling = date_sampling
        self.unreadable: set[str] = set()  # chips already warned about (this process)
        self.normalisation = {
            name: tuple(torch.tensor(v, dtype=torch.float32)[:, None, None]
                        for v in band_stats.for_source(name))
            for name in set(self.sources)
        }

    def __len__(self) -> int:
        return len(self.paths)

    def load_chip(self, item: int) -> torch.Tensor:
        """One normalised (4, S, S) chip."""
        source = self.sources[item]
        chip = chips.read_chip(self.paths[item], self.spec, source)
        return chips.to_size(normalise_chip(chip, *self.normalisation[source]), self.spec)

    def __getitem__(self, key: int | ItemKey) -> dict:
        item, _ = parse_key(key)  # a chip has one date: nothing to draw
        # an unreadable chip is replaced by another, as in the GeoTIFF Datasets
        item, image, unreadable = read_or_replace(item, self.load_chip, self.sample_ids,
                                                  self.unreadable)
        series = self.date_sampling in MULTI_DATE  # a chip's one "date"
        item_dict = {
            "image": image[None] if series else image,
            "label": self.targets[item],
            "sample_id": self.sample_ids[item],
            "date": [""] if series else "",
            "unreadable": unreadable,
        }
        if self.date_sampling == "pair":
            item_dict |= {"image2": image.clone(), "date2": ""}
        return item_dict


def open_dataset(
    root: str | Path,
    index: pd.DataFrame,
    band_stats: BandStats,
    date_sampling: str = "random",
    raw: bool = False,
) -> Dataset:
    """The Dataset of `index` sites of the corpus at `root`, for training and evaluation.

    The one place that picks the reader of a corpus: training calls only this, so each corpus
    kind (GeoTIFF folder, packed store, own chips) plugs in here and nowhere else. A packed
    store (a `.zarr` path or URL) gives a `PackedStoreDataset`, with uint16 images when `raw`
    (normalised later by its `normalise_batch`); a GeoTIFF corpus always gives normalised ones.
    """
    if is_store(root):
        return PackedStoreDataset(root, index, band_stats, date_sampling=date_sampling, raw=raw)
    if chips.is_chips_corpus(root):
        return ChipsDataset(chips.load_spec(root), index, band_stats, date_sampling)
    return PlanetFusionDataset(root, index, band_stats, date_sampling=date_sampling)
