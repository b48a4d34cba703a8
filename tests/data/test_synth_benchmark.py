"""The ``bench`` preset and the named benchmark split: realistic sizes, calibres, sites, look-alikes, labels."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import rsna_aneurysm.data.synth as synth
from rsna_aneurysm.cli import main as cli_main
from rsna_aneurysm.constants import ID_COL, LABEL_COLS, LOCATION_COLS, SEG_LABEL_OF
from rsna_aneurysm.data.synth import (
    BENCHMARK,
    BenchmarkSpec,
    SeriesSpec,
    generate_dataset,
    localizer_world,
    make_series,
)
from rsna_aneurysm.data.synth.anatomy import Pose
from rsna_aneurysm.data.synth.bench_anatomy import (
    aneurysm_sites,
    bench_tree,
    draw_bench_aneurysm,
    draw_diameter_mm,
    draw_lookalikes,
)
from rsna_aneurysm.data.synth.bench_style import draw_bench_style
from rsna_aneurysm.data.synth.geometry import plan_grid
from rsna_aneurysm.data.synth.labels import BENCH_PROFILE, REAL_LOCATION_COUNTS, draw_cases, location_probs, quota
from rsna_aneurysm.io.dicom import load_series
from rsna_aneurysm.io.nifti import read_volume

# Reference hashes of the existing presets' output, computed before the bench preset existed (commit b64ac22, with
# /tmp's one-off script: sha256 over each file's relative path then bytes, files in sorted path order). A change
# to tiny / small / full output (the demo and many tests depend on it) fails here.
TINY_SERIES_FILES_SHA = "46386450ed612155f6dc396473a1fed40089191dd62d7999926b478b16d95d0f"
TINY_SERIES_VOLUME_SHA = "106d57fddfac7218a41f4111ca16891d982d6380fdfbfe3bed7d5be97ab70570"
TINY_DATASET_SHA = "80008386aadcb806a51ea209c4f752025aca7ac2203f8e6b41b30b692be179f1"


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_existing_presets_are_unchanged(tmp_path: Path) -> None:
    t = make_series(tmp_path / "s", SeriesSpec(modality="CTA", preset="tiny", seed=7,
                                               locations=("Anterior Communicating Artery",)), series_uid="1.2.3")
    assert hashlib.sha256(t["volume"].array.tobytes()).hexdigest() == TINY_SERIES_VOLUME_SHA
    assert _tree_hash(tmp_path / "s") == TINY_SERIES_FILES_SHA
    generate_dataset(tmp_path / "ds", 12, preset="tiny", seed=5, n_test=3)
    assert _tree_hash(tmp_path / "ds") == TINY_DATASET_SHA


def test_aneurysm_diameters_are_skewed_small() -> None:
    rng = np.random.default_rng(0)
    d = np.array([draw_diameter_mm(rng) for _ in range(5000)])
    assert 0.8 <= np.mean(d < 7.0) <= 0.93
    assert 0.35 <= np.mean((d >= 2.0) & (d < 4.0)) <= 0.45
    assert 0.005 <= np.mean(d > 10.0) <= 0.06 and d.max() <= 12.0 and d.min() >= 1.5
    # The sac's world diameter is what was asked for, whatever the head's scale.
    tree = bench_tree(rng, 1.08)
    an = draw_bench_aneurysm("Left Middle Cerebral Artery", 3.0, rng, tree, 1.08)
    assert 2 * an.radius * 1.08 == pytest.approx(3.0)


CALIBRE_RANGES_MM = {"ICA cavernous": (4.0, 5.3), "ICA supraclinoid": (3.7, 4.9), "M1": (2.5, 3.5), "M2": (1.6, 2.4),
                     "A1": (1.6, 2.4), "PComA": (0.9, 1.6), "basilar": (2.6, 3.5), "vertebral": (2.6, 3.5),
                     "PCA": (1.6, 2.4), "AComA": (1.2, 1.9)}


@pytest.mark.parametrize("scale", [0.9, 1.1])
def test_vessel_calibres_are_real_diameters(scale: float) -> None:
    for seed in range(20):
        by_name: dict[str, list[float]] = {}
        for s in bench_tree(np.random.default_rng(seed), scale):
            by_name.setdefault(s.name, []).append((s.r0 + s.r1) * scale)  # world diameter
        for name, (lo, hi) in CALIBRE_RANGES_MM.items():
            assert lo <= min(by_name[name]) and max(by_name[name]) <= hi, (name, by_name[name])
    ica = np.mean([s.r0 + s.r1 for s in bench_tree(np.random.default_rng(0)) if s.name.startswith("ICA")])
    assert 4.0 <= ica <= 5.0


def test_location_quota_follows_the_real_localizer_counts() -> None:
    cases = draw_cases(4348, 0, "train", profile=BENCH_PROFILE)
    counts = Counter(loc for c in cases for loc in c.locations)
    total = sum(counts.values())
    assert [counts[name] for name in LOCATION_COLS] == quota(total, location_probs(BENCH_PROFILE)).tolist()
    real_total = sum(REAL_LOCATION_COUNTS.values())
    assert real_total == 2286
    for name in LOCATION_COLS:
        assert abs(counts[name] / total - REAL_LOCATION_COUNTS[name] / real_total) < 0.001, name
    assert counts.most_common(1)[0][0] == "Anterior Communicating Artery"
    assert min(counts, key=counts.get) == "Left Anterior Cerebral Artery"
    # Real data: one series per patient.
    assert len({c.patient_id for c in cases}) == len(cases)


def test_aneurysms_sit_at_bifurcations_and_bends() -> None:
    rng = np.random.default_rng(1)
    kinds, near = Counter(), 0
    n = 0
    for seed in range(8):
        tree = bench_tree(np.random.default_rng(seed))
        for loc in LOCATION_COLS:
            sites = aneurysm_sites(tree, loc)
            assert sites, loc
            pts = np.array([s.point for s in sites if s.kind != "straight"])
            for _ in range(6):
                an = draw_bench_aneurysm(loc, draw_diameter_mm(rng), rng, tree)
                kinds[an.site] += 1
                near += bool(np.min(np.linalg.norm(pts - an.attach, axis=1)) <= 2.1)
                n += 1
    assert near / n >= 0.8, (near, n)
    assert (kinds["bifurcation"] + kinds["origin"]) / n >= 0.4
    assert kinds["sidewall"] / n <= 0.15
    # The MCA's sites are its bends and its bifurcation (M1 end); the bifurcation is the favourite.
    tree = bench_tree(np.random.default_rng(0))
    mca = aneurysm_sites(tree, "Right Middle Cerebral Artery")
    best = max(mca, key=lambda s: s.weight)
    assert best.kind == "bifurcation" and np.allclose(best.point, [-42, 2, -19])


def test_lookalikes_are_labelled_right() -> None:
    rng = np.random.default_rng(3)
    tree = bench_tree(rng, 1.0)
    seen = Counter()
    for _ in range(20):
        la = draw_lookalikes(tree, rng)
        seen.update(k for k, _ in la.kinds)
        for s in la.arteries:  # loops and infundibula belong to an artery label
            assert s.location in SEG_LABEL_OF and s.name in ("loop", "infundibulum")
            if s.name == "infundibulum":
                assert 2 * s.r0 < 3.0 and s.r1 < s.r0
        assert all(getattr(v, "location", "") == "" for v in la.veins)  # veins: no artery label
        assert la.dots and la.bone and la.veins
    assert {"loop", "infundibulum", "cavernous sinus", "dot"} <= set(seen)


def test_t1post_has_bright_veins_outside_the_artery_labels_and_no_localizer(tmp_path: Path) -> None:
    t = make_series(tmp_path / "s", SeriesSpec(modality="MRI T1post", preset="bench", seed=5, locations=(),
                                               tilt=False), seg_dir=tmp_path / "seg")
    assert t["localizers"] == [] and t["aneurysms"] == []
    assert {"loop", "cavernous sinus", "dot"} <= {k["kind"] for k in t["lookalikes"]}
    vol = t["volume"]
    seg = read_volume(tmp_path / "seg" / f"{t['series_uid']}_cowseg.nii").array
    arteries = seg > 0
    assert set(np.unique(seg[arteries]).tolist()) >= {SEG_LABEL_OF["Left Posterior Communicating Artery"],
                                                      SEG_LABEL_OF["Anterior Communicating Artery"]}
    near = arteries.copy()
    for axis in range(3):  # dilate by two voxels: partial-volume rims are not look-alikes
        for shift in (-2, -1, 1, 2):
            near |= np.roll(arteries, shift, axis=axis)
    bright = vol.array > 0.8 * np.median(vol.array[arteries])
    assert (bright & ~near).sum() > 20 * (bright & arteries).sum() ** 0.5  # veins, dots: many bright voxels
    # The straight sinus is bright and carries no artery label.
    pose = Pose(np.asarray(t["pose"]["rotation"]), np.asarray(t["pose"]["translation"]), t["pose"]["scale"])
    i, j, k = np.rint(vol.world_to_index(pose.to_world(np.array([0.0, 45.0, -2.0])))).astype(int)
    assert seg[k, j, i] == 0 and bright[k, j, i]


def test_bench_grids_and_contrast_are_native_like() -> None:
    rng = np.random.default_rng(0)
    for modality in ("CTA", "MRA", "MRI T2", "MRI T1post"):
        for _ in range(10):
            g = plan_grid("bench", modality, "axial", np.zeros(3), rng)
            assert 0.6 <= g.row_spacing <= 0.8 and g.cols * g.col_spacing <= 215.0
            if modality in ("CTA", "MRA"):
                assert g.slice_spacing <= 1.0
            if modality == "MRI T2":
                assert g.slice_spacing >= 3.0
            assert g.rows * g.cols * g.n_slices <= 16e6
    styles = {m: [draw_bench_style(m, rng) for _ in range(20)] for m in ("CTA", "MRA", "MRI T2", "MRI T1post")}
    assert all(s.bone > 2 * s.vessel > 2 * s.grey for s, _ in styles["CTA"])
    assert all(s.vessel > 3 * s.white and s.bias >= 0.25 for s, _ in styles["MRA"])
    assert all(s.vessel < 0.2 * s.grey < s.csf for s, _ in styles["MRI T2"])
    assert all(s.white < s.vessel < 1.7 * s.white and v.vein > 0.8 * s.vessel for s, v in styles["MRI T1post"])
    for m, drawn in styles.items():  # noise varies per series
        noise = [s.noise / max(s.vessel, s.csf) for s, _ in drawn]
        assert max(noise) > 1.5 * min(noise), m


def test_bench_dataset_one_series_per_patient_and_sites_in_truth(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "d", 3, preset="bench", seed=2, n_test=1)
    generate_dataset(tmp_path / "w", 3, preset="bench", seed=2, n_test=1, workers=2)
    assert _tree_hash(tmp_path / "d") == _tree_hash(tmp_path / "w")  # same bytes whatever the worker count
    truth = json.loads((tmp_path / "d" / "synth_truth.json").read_text())
    assert len({e["patient_id"] for e in truth.values()}) == len(truth) == 4
    assert all(e["preset"] == "bench" and e["lookalikes"] for e in truth.values())
    for e in truth.values():
        assert len(e["localizers"]) == len(e["aneurysms"])
        assert all(a["site"] for a in e["aneurysms"])


def test_benchmark_split_is_fixed_and_scorable() -> None:
    assert (BENCHMARK.preset, BENCHMARK.n_train, BENCHMARK.n_test) == ("bench", 120, 100)
    cases = draw_cases(BENCHMARK.n_test, BENCHMARK.seed, "test", cover_labels=True, profile=BENCH_PROFILE,
                       cover_min=BENCHMARK.test_cover_min)
    per_location = Counter(loc for c in cases for loc in set(c.locations))
    assert min(per_location[name] for name in LOCATION_COLS) >= BENCHMARK.test_cover_min
    assert 0 < sum(c.positive for c in cases) < len(cases)


def test_cli_benchmark_writes_the_named_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    # The real split takes minutes; the command is the same for a small stand-in spec.
    spec = BenchmarkSpec(name="stand-in", seed=4, n_train=2, n_test=16, preset="tiny", test_cover_min=1)
    monkeypatch.setattr(synth, "BENCHMARK", spec)
    out = tmp_path / "b"
    assert cli_main(["synth", "--benchmark", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["benchmark"]["name"] == "stand-in"
    assert (summary["n_train"], summary["n_test"], summary["seed"]) == (2, 16, 4)
    assert pl.read_csv(out / "train.csv").height == 2
    solution = pl.read_csv(out / "test" / "solution.csv")
    assert solution.height == 16 and solution.columns == [ID_COL, *LABEL_COLS]
    for col in LABEL_COLS:
        assert sorted(solution[col].unique().to_list()) == [0, 1], col
    assert cli_main(["synth", "--benchmark", "--out", str(tmp_path / "c"), "--n-series", "3"]) == 2
    assert cli_main(["synth", "--out", str(tmp_path / "c")]) == 2  # neither --n-series nor --benchmark


def test_bench_series_reads_back_and_localizer_points_at_the_sac(tmp_path: Path) -> None:
    t = make_series(tmp_path, SeriesSpec(modality="CTA", preset="bench", seed=11, tilt=True,
                                         locations=("Basilar Tip", "Left Middle Cerebral Artery")), "1.2.3.4")
    vol = load_series(tmp_path)
    assert vol.array.shape == t["volume"].array.shape
    assert np.array_equal(vol.array, t["volume"].array)
    assert np.allclose(vol.origin, t["volume"].origin, atol=1e-4)
    for row, an in zip(t["localizers"], t["aneurysms"], strict=True):
        assert np.linalg.norm(localizer_world(t["volume"], row) - an["center_lps"]) <= t["spacing"][2] / 2 + 0.02
        assert an["site"] in ("bifurcation", "bend", "origin", "sidewall", "straight")
