"""Label statistics of the synthetic dataset: who is a patient, which series are positive, where the aneurysms are.

The targets follow the real training set (``shared/docs/competition.md``): modality mix 1808/1252/983/305, 43 %
of series positive, about 2,251 aneurysms over about 1,862 positive series, ~1.2 series per patient. Counts are
allocated by quota (largest remainder) rather than drawn independently, so even a 24-series demo set has the right
mix and both classes, and a 4,348-series draw matches the targets almost exactly. ``cover_labels=True`` makes a split
scorable: each of the 14 label columns holds both classes (the competition metric's column-wise AUC needs that).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from pydicom.uid import generate_uid

from ...constants import ANEURYSM_PRESENT, ID_COL, LOCATION_COLS, MODALITIES, TRAIN_COLS

# Series per modality in the real training set.
MODALITY_COUNTS: dict[str, int] = {"CTA": 1808, "MRA": 1252, "MRI T2": 983, "MRI T1post": 305}
POSITIVE_RATE = 1864 / 4348
# Aneurysms per location (localizer rows). AComA (most common) and Left ACA (rarest) are the published figures;
# the others are plausible made-up values that sum to the published total of 2,251.
LOCATION_COUNTS: dict[str, int] = {
    "Left Infraclinoid Internal Carotid Artery": 150,
    "Right Infraclinoid Internal Carotid Artery": 130,
    "Left Supraclinoid Internal Carotid Artery": 310,
    "Right Supraclinoid Internal Carotid Artery": 290,
    "Left Middle Cerebral Artery": 270,
    "Right Middle Cerebral Artery": 280,
    "Anterior Communicating Artery": 363,
    "Left Anterior Cerebral Artery": 46,
    "Right Anterior Cerebral Artery": 55,
    "Left Posterior Communicating Artery": 90,
    "Right Posterior Communicating Artery": 95,
    "Basilar Tip": 110,
    "Other Posterior Circulation": 62,
}
# Aneurysms per positive series: 1, 2 or 3 (mean 1.21 = 2251 / 1862).
ANEURYSM_COUNT_PROBS: tuple[float, ...] = (0.83, 0.13, 0.04)
# Series per patient: 1 or 2 (mean 1.2). Sets under 8 series use one series per patient.
SERIES_PER_PATIENT_PROBS: tuple[float, ...] = (0.8, 0.2)
# The real localizer counts per location (the widely shared copy of train_localizers.csv, 2,286 rows): the
# ``bench`` preset draws locations in these proportions.
REAL_LOCATION_COUNTS: dict[str, int] = {
    "Left Infraclinoid Internal Carotid Artery": 83,
    "Right Infraclinoid Internal Carotid Artery": 104,
    "Left Supraclinoid Internal Carotid Artery": 354,
    "Right Supraclinoid Internal Carotid Artery": 293,
    "Left Middle Cerebral Artery": 226,
    "Right Middle Cerebral Artery": 317,
    "Anterior Communicating Artery": 375,
    "Left Anterior Cerebral Artery": 46,
    "Right Anterior Cerebral Artery": 62,
    "Left Posterior Communicating Artery": 88,
    "Right Posterior Communicating Artery": 101,
    "Basilar Tip": 113,
    "Other Posterior Circulation": 124,
}
FEMALE_RATE = 0.62
AGE_MEAN, AGE_SD, AGE_MIN, AGE_MAX = 57.0, 14.0, 18, 89



@dataclass(frozen=True)
class LabelProfile:
    """Which location counts and series-per-patient mix a preset draws from."""

    location_counts: dict[str, int]
    series_per_patient_probs: tuple[float, ...]


DEFAULT_PROFILE = LabelProfile(LOCATION_COUNTS, SERIES_PER_PATIENT_PROBS)
# The benchmark: real localizer counts and, as in the real data, one series per patient.
BENCH_PROFILE = LabelProfile(REAL_LOCATION_COUNTS, (1.0,))


def label_profile(preset: str) -> LabelProfile:
    """The label profile of a geometry preset: ``bench`` follows the real data more closely, the others as before."""
    return BENCH_PROFILE if preset == "bench" else DEFAULT_PROFILE


SPLIT_CODES = {"train": 1, "test": 2, "series": 3}
# Smallest split ``cover_labels`` accepts: 13 locations need 13 aneurysms (at most 3 per series) and one negative
# series, and from 16 series the quota's 43 % positives usually carry them without turning more series positive.
COVER_MIN_SERIES = 16


@dataclass
class Case:
    """The label-level description of one series: identity, demographics, modality and its aneurysm locations."""

    series_uid: str
    patient_id: str
    age: int
    sex: str
    modality: str
    locations: tuple[str, ...]  # one entry per aneurysm; a location may repeat

    @property
    def positive(self) -> bool:
        return bool(self.locations)


def make_uid(seed: int, *parts: object) -> str:
    """A deterministic DICOM UID (pydicom's root, like the competition's) derived from the seed and ``parts``."""
    return str(generate_uid(entropy_srcs=["rsna-aneurysm-synth", str(seed), *(str(p) for p in parts)]))


def quota(n: int, weights: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``n`` proportional to ``weights`` (largest remainder method)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = n * w / w.sum()
    counts = np.floor(exact).astype(int)
    rest = n - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts


def location_probs(profile: LabelProfile = DEFAULT_PROFILE) -> np.ndarray:
    """Probability of each location (LOCATION_COLS order) for one aneurysm."""
    w = np.array([profile.location_counts[name] for name in LOCATION_COLS], dtype=np.float64)
    return w / w.sum()


def draw_locations(rng: np.random.Generator, profile: LabelProfile = DEFAULT_PROFILE) -> tuple[str, ...]:
    """The aneurysm locations of one positive series (1-3 aneurysms, repeats allowed)."""
    k = 1 + int(rng.choice(len(ANEURYSM_COUNT_PROBS), p=ANEURYSM_COUNT_PROBS))
    idx = rng.choice(len(LOCATION_COLS), size=k, p=location_probs(profile))
    return tuple(LOCATION_COLS[i] for i in idx)


def _patient_sizes(n: int, rng: np.random.Generator, profile: LabelProfile = DEFAULT_PROFILE) -> list[int]:
    probs = profile.series_per_patient_probs
    if n < 8 or len(probs) == 1:
        return [1] * n
    sizes: list[int] = []
    while sum(sizes) < n:
        sizes.append(1 + int(rng.choice(len(probs), p=probs)))
    sizes[-1] -= sum(sizes) - n
    return sizes


def _cover_locations(sizes: list[int], slots_of: dict[int, list[int]], rng: np.random.Generator,
                     profile: LabelProfile = DEFAULT_PROFILE) -> dict[int, list[int]]:
    """Change the location indices per positive patient (``slots_of``) as little as needed to use every location.

    While the aneurysms are fewer than the locations, one is added to a random positive patient with fewer than 3,
    else a random negative patient whose series are not the last negative ones turns positive (1-3 aneurysms as
    usual). Locations no aneurysm has go to the added aneurysms first (the rest are drawn), then replace an
    aneurysm of the most frequent location. A draw that already uses every location comes back unchanged.
    """
    n_loc, max_k = len(LOCATION_COLS), len(ANEURYSM_COUNT_PROBS)
    slots_of = {p: list(s) for p, s in slots_of.items()}
    total = sum(len(s) for s in slots_of.values())
    n_negative = sum(sizes) - sum(sizes[p] for p in slots_of)
    while total < n_loc:
        growable = sorted(p for p, s in slots_of.items() if len(s) < max_k)
        if growable:
            slots_of[growable[int(rng.integers(len(growable)))]].append(-1)
            total += 1
            continue
        convertible = [p for p in range(len(sizes)) if p not in slots_of and n_negative - sizes[p] >= 1]
        if not convertible:
            raise ValueError(f"cover_labels: {sum(sizes)} series cannot hold {n_loc} aneurysms and a negative series")
        p = convertible[int(rng.integers(len(convertible)))]
        k = 1 + int(rng.choice(max_k, p=ANEURYSM_COUNT_PROBS))
        slots_of[p] = [-1] * k
        n_negative -= sizes[p]
        total += k
    counts = np.bincount([loc for s in slots_of.values() for loc in s if loc >= 0], minlength=n_loc)
    missing = [int(i) for i in rng.permutation(np.flatnonzero(counts == 0))]
    for p in sorted(slots_of):
        for i, loc in enumerate(slots_of[p]):
            if loc < 0:
                loc = missing.pop() if missing else int(rng.choice(n_loc, p=location_probs(profile)))
                slots_of[p][i] = loc
                counts[loc] += 1
    while missing:  # total >= n_loc, so a location that is missing means another one is used twice or more
        donor = int(np.argmax(counts))
        where = [(p, i) for p in sorted(slots_of) for i, loc in enumerate(slots_of[p]) if loc == donor]
        p, i = where[int(rng.integers(len(where)))]
        loc = missing.pop()
        slots_of[p][i] = loc
        counts[donor] -= 1
        counts[loc] += 1
    return slots_of


def _top_up_locations(slots_of: dict[int, list[int]], min_count: int,
                      rng: np.random.Generator) -> dict[int, list[int]]:
    """Make every location positive in at least ``min_count`` patients (after :func:`_cover_locations`).

    A short location takes over an aneurysm of the location with the most positive patients (while that one keeps
    more than ``min_count``), else is added to a positive patient with fewer than 3 aneurysms; the positive and
    negative patients stay as they are.
    """
    n_loc, max_k = len(LOCATION_COLS), len(ANEURYSM_COUNT_PROBS)
    slots_of = {p: list(s) for p, s in slots_of.items()}

    def n_pos(loc: int) -> int:
        return sum(loc in s for s in slots_of.values())

    for loc in (int(v) for v in rng.permutation(n_loc)):
        while n_pos(loc) < min_count:
            counts = np.array([n_pos(i) for i in range(n_loc)])
            donor = int(np.argmax(counts))
            where = [(p, i) for p in sorted(slots_of) if loc not in slots_of[p]
                     for i, v in enumerate(slots_of[p]) if v == donor] if counts[donor] > min_count else []
            if where:
                p, i = where[int(rng.integers(len(where)))]
                slots_of[p][i] = loc
                continue
            growable = [p for p in sorted(slots_of) if len(slots_of[p]) < max_k and loc not in slots_of[p]]
            if not growable:
                raise ValueError(f"cover_min={min_count}: {len(slots_of)} positive series cannot hold "
                                 f"{min_count} positives for each of {n_loc} locations")
            slots_of[growable[int(rng.integers(len(growable)))]].append(loc)
    return slots_of


def draw_cases(n_series: int, seed: int, split: str = "train", *, cover_labels: bool = False,
               profile: LabelProfile = DEFAULT_PROFILE, cover_min: int = 1) -> list[Case]:
    """Draw ``n_series`` cases (sorted by SeriesInstanceUID) with the competition's label statistics.

    With ``n_series >= 2`` there is at least one positive and one negative series. ``cover_labels=True`` (needs
    ``n_series >= COVER_MIN_SERIES``) also makes every location positive in at least one series, so each of the 14
    label columns holds both classes; it only changes the labels where the plain draw misses a location (adding
    aneurysms, up to 3 per series, before turning negative patients positive), and keeps the UIDs, patients,
    demographics and modalities of the plain draw. ``profile`` sets the location weights and series per patient
    (:func:`label_profile` of the preset). ``cover_min > 1`` (with ``cover_labels``) asks for that many positive
    patients per location (:func:`_top_up_locations`), so a benchmark's per-location AUCs rest on several cases.
    """
    if n_series < 0:
        raise ValueError(f"n_series must be >= 0, got {n_series}")
    if split not in SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_CODES)}")
    if cover_labels and n_series < COVER_MIN_SERIES:
        raise ValueError(f"cover_labels needs at least {COVER_MIN_SERIES} series (one positive per location and a "
                         f"negative one), got {n_series}")
    rng = np.random.default_rng([seed, SPLIT_CODES[split], 11])
    sizes = _patient_sizes(n_series, rng, profile)
    target = int(round(POSITIVE_RATE * n_series))
    if n_series >= 2:
        target = min(max(target, 1), n_series - 1)
    positive = np.zeros(len(sizes), dtype=bool)
    n_pos = 0
    for p in rng.permutation(len(sizes)):
        if n_pos + sizes[p] <= target:
            positive[p] = True
            n_pos += sizes[p]
    modality_counts = quota(n_series, np.array([MODALITY_COUNTS[m] for m in MODALITIES]))
    modalities = rng.permutation(np.repeat(np.arange(len(MODALITIES)), modality_counts))
    # Aneurysms per positive patient, then locations for all of them by quota, dealt out in random order.
    n_aneurysms = 1 + rng.choice(len(ANEURYSM_COUNT_PROBS), size=int(positive.sum()), p=ANEURYSM_COUNT_PROBS)
    per_location = quota(int(n_aneurysms.sum()), location_probs(profile))
    slots = rng.permutation(np.repeat(np.arange(len(LOCATION_COLS)), per_location))
    bounds = np.concatenate([[0], np.cumsum(n_aneurysms)])
    slots_of = {int(p): [int(i) for i in slots[bounds[q]:bounds[q + 1]]]
                for q, p in enumerate(np.flatnonzero(positive))}
    if cover_labels:  # its own generator, so demographics (drawn below) match the plain draw
        slots_of = _cover_locations(sizes, slots_of, np.random.default_rng([seed, SPLIT_CODES[split], 13]), profile)
        if cover_min > 1:
            slots_of = _top_up_locations(slots_of, cover_min, np.random.default_rng([seed, SPLIT_CODES[split], 17]))
    cases: list[Case] = []
    s = 0
    for p, size in enumerate(sizes):
        age = int(np.clip(round(rng.normal(AGE_MEAN, AGE_SD)), AGE_MIN, AGE_MAX))
        sex = "Female" if rng.random() < FEMALE_RATE else "Male"
        locations = tuple(LOCATION_COLS[i] for i in slots_of.get(p, ()))
        patient_id = f"SYN{split[:2].upper()}{seed}P{p:05d}"
        for _ in range(size):
            cases.append(Case(series_uid=make_uid(seed, split, "series", s), patient_id=patient_id, age=age,
                              sex=sex, modality=MODALITIES[modalities[s]], locations=locations))
            s += 1
    return sorted(cases, key=lambda c: c.series_uid)


def label_row(case: Case) -> dict[str, object]:
    """One train.csv row (TRAIN_COLS order) for a case."""
    row: dict[str, object] = {ID_COL: case.series_uid, "PatientAge": case.age, "PatientSex": case.sex,
                              "Modality": case.modality}
    for name in LOCATION_COLS:
        row[name] = int(name in case.locations)
    row[ANEURYSM_PRESENT] = int(case.positive)
    return row


def cases_frame(cases: list[Case], with_patient: bool = False) -> pl.DataFrame:
    """train.csv-shaped table of ``cases`` (plus PatientID when asked), label columns as Int64."""
    schema: dict[str, pl.DataType] = {c: pl.Int64 for c in TRAIN_COLS}
    schema.update({ID_COL: pl.String, "PatientSex": pl.String, "Modality": pl.String})
    rows = [label_row(c) for c in cases]
    df = pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)
    if with_patient:
        df = df.with_columns(pl.Series("PatientID", [c.patient_id for c in cases], dtype=pl.String))
    return df


def draw_label_table(n_series: int, seed: int, preset: str = "tiny") -> pl.DataFrame:
    """The train.csv table (18 columns plus ``PatientID``) that ``generate_dataset`` would write, without rendering.

    Equal to the train split of ``generate_dataset(out, n_series, preset=preset, seed=seed)`` (the labels depend on
    the preset only through :func:`label_profile`: ``bench`` differs); fold splitting tests use it at the real size
    (4,348 series).
    """
    return cases_frame(draw_cases(n_series, seed, "train", profile=label_profile(preset)), with_patient=True)
