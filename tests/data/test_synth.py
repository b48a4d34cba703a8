"""The synthetic dataset generator: layout, label statistics, geometry truth, pixels, test-time tags, determinism."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pydicom
import pytest
from pydicom.uid import RLELossless

from rsna_aneurysm.cli import main as cli_main
from rsna_aneurysm.constants import (
    ANEURYSM_PRESENT,
    ID_COL,
    LABEL_COLS,
    LOCALIZER_COLS,
    LOCATION_COLS,
    MODALITIES,
    SEG_LABEL_OF,
    SEG_LABELS,
    TEST_TAGS_WITH_DATA,
    TRAIN_COLS,
)
from rsna_aneurysm.data.synth import SeriesSpec, draw_label_table, generate_dataset, localizer_world, make_series
from rsna_aneurysm.data.synth.anatomy import vessel_tree
from rsna_aneurysm.data.synth.geometry import plan_grid
from rsna_aneurysm.data.synth.labels import COVER_MIN_SERIES, cases_frame, draw_cases
from rsna_aneurysm.io.nifti import read_volume

N_TRAIN, N_TEST = 24, 5


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """A tiny dataset big enough for every quirk to appear at least once."""
    out = tmp_path_factory.mktemp("synth") / "data"
    summary = generate_dataset(out, N_TRAIN, preset="tiny", seed=0, n_test=N_TEST)
    truth = json.loads((out / "synth_truth.json").read_text())
    return out, summary, truth


def _files(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]


def _values(d: pydicom.Dataset) -> np.ndarray:
    """Modality values of a file the way a correct reader gets them (rescale, MONOCHROME1 inversion)."""
    a = d.pixel_array.astype(np.float32)
    if d.PhotometricInterpretation == "MONOCHROME1":
        a = (2 ** int(d.BitsStored) - 1) - a
    return a * float(d.get("RescaleSlope", 1)) + float(d.get("RescaleIntercept", 0))


def _check_against_truth(folder: Path, truth: dict) -> None:
    """Geometry tags and pixels of every file equal the truth volume (single- and multi-frame)."""
    vol = truth["volume"]
    files = _files(folder)
    spacing_i, spacing_j, spacing_k = vol.spacing
    if truth["multiframe"]:
        (d,) = files
        assert int(d.NumberOfFrames) == vol.array.shape[0]
        frames = _values(d)
        shared = d.SharedFunctionalGroupsSequence[0]
        if truth["multiframe_no_geometry"]:
            assert "PlaneOrientationSequence" not in shared and "PixelSpacing" not in shared.PixelMeasuresSequence[0]
            assert "PixelSpacing" not in d and "ImageOrientationPatient" not in d
        else:
            assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == [spacing_j, spacing_i]
            iop = [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient]
            np.testing.assert_allclose(iop, np.concatenate([vol.direction[:, 0], vol.direction[:, 1]]), atol=1e-9)
        for f, item in enumerate(d.PerFrameFunctionalGroupsSequence):
            k = vol.meta["frames"].index(f)
            ipp = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
            np.testing.assert_allclose(ipp, vol.index_to_world((0, 0, k)), atol=1e-4)
            np.testing.assert_array_equal(frames[f], vol.array[k])
        return
    odd = truth["odd_slice_sop"]
    files = [d for d in files if d.SOPInstanceUID != odd]
    assert len(files) == vol.array.shape[0]
    numbers = {}
    for d in files:
        k = vol.meta["sop_uids"].index(d.SOPInstanceUID)
        numbers[k] = int(d.InstanceNumber)
        assert (d.Rows, d.Columns) == vol.array.shape[1:]
        assert [float(v) for v in d.PixelSpacing] == [spacing_j, spacing_i]  # [row spacing, column spacing]
        iop = [float(v) for v in d.ImageOrientationPatient]
        np.testing.assert_allclose(iop, np.concatenate([vol.direction[:, 0], vol.direction[:, 1]]), atol=1e-9)
        np.testing.assert_allclose([float(v) for v in d.ImagePositionPatient], vol.index_to_world((0, 0, k)),
                                   atol=1e-4)
        np.testing.assert_array_equal(_values(d), vol.array[k])
    order = [numbers[k] for k in sorted(numbers)]
    if truth["shuffle_instance_numbers"]:
        assert sorted(order) == list(range(1, len(order) + 1)) and order != sorted(order)
    elif truth["reversed"]:
        assert order == sorted(order, reverse=True)
    else:
        assert order == sorted(order)


def test_train_csv_columns_and_labels(ds: tuple[Path, dict, dict]) -> None:
    out, summary, _ = ds
    df = pl.read_csv(out / "train.csv")
    assert tuple(df.columns) == TRAIN_COLS
    assert df.height == N_TRAIN and df[ID_COL].n_unique() == N_TRAIN
    assert df["PatientAge"].dtype == pl.Int64 and df["PatientAge"].min() >= 18 and df["PatientAge"].max() <= 89
    assert set(df["PatientSex"]) <= {"Female", "Male"} and set(df["Modality"]) <= set(MODALITIES)
    locs = df.select(LOCATION_COLS).to_numpy()
    assert set(np.unique(locs)) <= {0, 1}
    np.testing.assert_array_equal(df[ANEURYSM_PRESENT].to_numpy(), locs.max(axis=1))
    assert 0 < df[ANEURYSM_PRESENT].sum() < N_TRAIN
    # The label-only draw is the same table.
    assert draw_label_table(N_TRAIN, 0).drop("PatientID").equals(df)
    assert summary["n_train"] == N_TRAIN and summary["n_test"] == N_TEST


def test_localizers_format_and_frames(ds: tuple[Path, dict, dict]) -> None:
    out, _, truth = ds
    loc = pl.read_csv(out / "train_localizers.csv")
    assert tuple(loc.columns) == LOCALIZER_COLS
    assert loc.height == sum(len(t["aneurysms"]) for t in truth.values() if t["split"] == "train") > 0
    seen_f = False
    for uid, sop, coords, location in loc.iter_rows():
        c = ast.literal_eval(coords)
        t = truth[uid]
        assert location in LOCATION_COLS and location in {a["location"] for a in t["aneurysms"]}
        assert set(c) == ({"x", "y", "f"} if t["multiframe"] else {"x", "y"})
        assert all(isinstance(c[key], float) for key in ("x", "y"))
        assert (out / "series" / uid / f"{sop}.dcm").exists()
        seen_f |= "f" in c
    assert seen_f, "the fixture should hold a positive multi-frame series"


def test_localizer_points_at_the_aneurysm(ds: tuple[Path, dict, dict]) -> None:
    """x, y (and f) of each localizer row, mapped through the file's own geometry, land on the true centre."""
    out, _, truth = ds
    for uid, sop, coords, _location in pl.read_csv(out / "train_localizers.csv").iter_rows():
        t, c = truth[uid], ast.literal_eval(coords)
        if t["multiframe_no_geometry"]:
            continue
        d = pydicom.dcmread(out / "series" / uid / f"{sop}.dcm")
        if "f" in c:
            geo = d.SharedFunctionalGroupsSequence[0]
            ipp = d.PerFrameFunctionalGroupsSequence[c["f"]].PlanePositionSequence[0].ImagePositionPatient
            iop = geo.PlaneOrientationSequence[0].ImageOrientationPatient
            ps = geo.PixelMeasuresSequence[0].PixelSpacing
        else:
            ipp, iop, ps = d.ImagePositionPatient, d.ImageOrientationPatient, d.PixelSpacing
        row, col = np.array(iop[:3], float), np.array(iop[3:], float)
        world = np.array(ipp, float) + c["x"] * float(ps[1]) * row + c["y"] * float(ps[0]) * col
        centres = [a["center_lps"] for a in t["aneurysms"] if a["sop_uid"] == sop]
        normal = np.cross(row, col)
        err = min(np.linalg.norm(world - ctr) for ctr in centres)
        off_plane = min(abs((np.asarray(ctr) - world) @ normal) for ctr in centres)
        assert err <= t["spacing"][2] / 2 + 0.02 and off_plane <= t["spacing"][2] / 2 + 1e-3


def test_quirks_and_layout(ds: tuple[Path, dict, dict]) -> None:
    out, summary, truth = ds
    train = [t for t in truth.values() if t["split"] == "train"]
    assert {t["plane"] for t in train} == {"axial", "coronal", "sagittal"}
    for q in ("multiframe", "multiframe_no_geometry", "reversed", "shuffle_instance_numbers", "odd_slice"):
        assert any(t[q] for t in train), q
    assert summary["quirks"]["monochrome1"] >= 1 and summary["quirks"]["rle"] >= 1
    for t in truth.values():
        assert set(t) >= {"split", "modality", "plane", "multiframe", "reversed", "shuffle_instance_numbers",
                          "odd_slice", "spacing", "aneurysms", "landmarks_lps"}
        assert len(t["landmarks_lps"]) == len(LOCATION_COLS)
        for a in t["aneurysms"]:
            assert set(a) >= {"location", "center_lps", "radius_mm"} and a["radius_mm"] > 0
    segs = sorted((out / "segmentations").iterdir())
    assert 1 <= len(segs) <= 3 and all(truth[p.name]["has_segmentation"] for p in segs)
    # Patients: several series may share one; train and test patients differ.
    ids = pl.read_csv(out / "train.csv")[ID_COL].to_list()
    assert len({truth[u]["patient_id"] for u in ids}) <= len(ids)


def test_test_split_carries_only_allowed_tags(ds: tuple[Path, dict, dict]) -> None:
    out, _, truth = ds
    test_csv = pl.read_csv(out / "test" / "test.csv")
    solution = pl.read_csv(out / "test" / "solution.csv")
    assert test_csv.columns == [ID_COL] and tuple(solution.columns) == (ID_COL, *LABEL_COLS)
    assert test_csv.height == N_TEST and 0 < solution[ANEURYSM_PRESENT].sum() < N_TEST
    assert not set(test_csv[ID_COL]) & set(pl.read_csv(out / "train.csv")[ID_COL])
    multiframe_seen = False
    for uid in test_csv[ID_COL]:
        assert truth[uid]["split"] == "test"
        for d in _files(out / "test" / "series" / uid):
            assert {e.keyword for e in d} <= TEST_TAGS_WITH_DATA
            assert "PixelData" in d and "SeriesInstanceUID" in d and "PatientAge" not in d
            if truth[uid]["multiframe"]:
                multiframe_seen = True
                assert "PerFrameFunctionalGroupsSequence" not in d and "ImagePositionPatient" in d
                if not truth[uid]["multiframe_no_geometry"]:
                    assert {"ImageOrientationPatient", "PixelSpacing", "SpacingBetweenSlices"} <= set(d.dir())
    assert multiframe_seen


def test_segmentations_match_series_grid_and_vessels(ds: tuple[Path, dict, dict]) -> None:
    out, _, truth = ds
    for folder in sorted((out / "segmentations").iterdir()):
        uid, t = folder.name, truth[folder.name]
        image = read_volume(folder / f"{uid}.nii")
        seg = read_volume(folder / f"{uid}_cowseg.nii")
        for v in (image, seg):
            assert v.array.shape == tuple(t["shape_kji"])
            np.testing.assert_allclose(v.spacing, t["spacing"], atol=1e-5)
            np.testing.assert_allclose(v.origin, t["origin"], atol=1e-4)
            np.testing.assert_allclose(v.direction, t["direction"], atol=1e-6)
        assert seg.array.dtype == np.uint8
        assert set(np.unique(seg.array)) <= {0, *SEG_LABELS}


def test_segmentation_labels_cover_each_segment(tmp_path: Path) -> None:
    """Every one of the 13 labels is present, and each labelled voxel lies on a segment of its location."""
    t = make_series(tmp_path / "s", SeriesSpec(modality="MRA", preset="small", seed=4, locations=()),
                    seg_dir=tmp_path / "seg")
    seg = read_volume(tmp_path / "seg" / f"{t['series_uid']}_cowseg.nii")
    assert set(np.unique(seg.array)) == {0, *SEG_LABELS}
    rot, shift, scale = (np.asarray(t["pose"][k]) for k in ("rotation", "translation", "scale"))
    tree = vessel_tree()
    half_diag = 0.5 * np.linalg.norm(seg.spacing) / scale
    for label, name in SEG_LABELS.items():
        kji = np.argwhere(seg.array == label)
        head = ((seg.index_to_world(kji[:, ::-1]) - shift) @ rot) / scale
        dist = np.min([s.sdf(*head.T, radius_scale=t["vessel_radius_scale"]) for s in tree if s.location == name],
                      axis=0)
        assert dist.max() <= half_diag + 1e-6, name
        # The location's landmark (a point on its centre line) is labelled with it.
        k = np.rint(seg.world_to_index(t["landmarks_lps"][name])).astype(int)
        assert seg.array[k[2], k[1], k[0]] == SEG_LABEL_OF[name], name


def test_label_statistics_match_the_competition() -> None:
    df = draw_label_table(4348, seed=0)
    assert tuple(df.columns) == (*TRAIN_COLS, "PatientID") and df.height == 4348
    mix = {"CTA": 1808, "MRA": 1252, "MRI T2": 983, "MRI T1post": 305}
    counts = dict(df["Modality"].value_counts().iter_rows())
    for m, n in mix.items():
        assert abs(counts[m] / 4348 - n / 4348) < 0.02, m
    assert abs(df[ANEURYSM_PRESENT].mean() - 0.43) < 0.02
    per_location = {c: df[c].sum() for c in LOCATION_COLS}
    assert max(per_location, key=per_location.get) == "Anterior Communicating Artery"
    assert min(per_location, key=per_location.get) == "Left Anterior Cerebral Artery"
    positives = df.filter(pl.col(ANEURYSM_PRESENT) == 1)
    assert 1.05 < sum(per_location.values()) / positives.height < 1.35  # several locations per series happen
    assert 1.1 < df.height / df["PatientID"].n_unique() < 1.3
    assert df.group_by("PatientID").agg(pl.col(ANEURYSM_PRESENT).n_unique())[ANEURYSM_PRESENT].max() == 1


def test_left_structures_have_larger_lps_x(ds: tuple[Path, dict, dict]) -> None:
    _, _, truth = ds
    for t in truth.values():
        lm = t["landmarks_lps"]
        for name in LOCATION_COLS:
            if name.startswith("Left "):
                assert lm[name][0] > lm["Right " + name[5:]][0], name
        mid = np.mean([lm[n] for n in LOCATION_COLS if n.startswith(("Left ", "Right "))], axis=0)
        for a in t["aneurysms"]:
            side = np.sign(a["center_lps"][0] - mid[0])
            if a["location"].startswith("Left "):
                assert side > 0
            elif a["location"].startswith("Right "):
                assert side < 0


@pytest.mark.parametrize("modality", ["CTA", "MRA"])
def test_aneurysm_is_bright_at_its_centre(tmp_path: Path, modality: str) -> None:
    t = make_series(tmp_path, SeriesSpec(modality=modality, seed=2, locations=("Anterior Communicating Artery",)))
    vol, (a,) = t["volume"], t["aneurysms"]
    i, j, k = np.rint(vol.world_to_index(a["center_lps"])).astype(int)
    brain = np.median(vol.array[vol.array.shape[0] // 2])
    at_centre = vol.array[k, j, i]
    if modality == "CTA":
        assert at_centre > 150.0  # contrasted blood, in HU
    assert at_centre > brain + 100.0
    assert len(list(tmp_path.glob("*.dcm"))) == vol.array.shape[0]


@pytest.mark.parametrize("spec", [
    SeriesSpec(modality="CTA", plane="axial", reversed=True, seed=1, tilt=True),
    SeriesSpec(modality="MRI T2", plane="coronal", shuffle_instance_numbers=True, seed=2),
    SeriesSpec(modality="MRI T1post", plane="sagittal", monochrome1=True, seed=3, odd_slice=True),
    SeriesSpec(modality="MRA", transfer_syntax=RLELossless, seed=4),
    SeriesSpec(modality="CTA", plane="coronal", multiframe=True, shuffle_instance_numbers=True, seed=5, tilt=True),
    SeriesSpec(modality="MRA", multiframe=True, multiframe_no_geometry=True, reversed=True, seed=6),
], ids=["axial-reversed-tilted", "coronal-shuffled", "sagittal-mono1-odd", "rle", "multiframe", "mf-nogeo"])
def test_files_read_back_to_the_truth(tmp_path: Path, spec: SeriesSpec) -> None:
    t = make_series(tmp_path, spec, "1.2.3.4")
    _check_against_truth(tmp_path, t)
    if spec.transfer_syntax:
        assert all(d.file_meta.TransferSyntaxUID == RLELossless for d in _files(tmp_path))
    for row in t["localizers"]:
        near = min(np.linalg.norm(localizer_world(t["volume"], row) - a["center_lps"]) for a in t["aneurysms"])
        assert near <= t["volume"].spacing[2] / 2 + 0.02
    if spec.odd_slice:
        (odd,) = [d for d in _files(tmp_path) if d.SOPInstanceUID == t["odd_slice_sop"]]
        vol = t["volume"]
        assert odd.SOPInstanceUID not in vol.meta["sop_uids"]
        assert (odd.Rows, odd.Columns) != vol.array.shape[1:] or not np.allclose(
            [float(v) for v in odd.ImageOrientationPatient[:3]], vol.direction[:, 0])


def test_deterministic_for_a_seed_and_any_worker_count(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    generate_dataset(a, 6, preset="tiny", seed=7, n_test=2, workers=1)
    generate_dataset(b, 6, preset="tiny", seed=7, n_test=2, workers=2)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 20
    for rel in files_a:
        if rel.name == "synth_truth.json":
            assert json.loads((a / rel).read_text()) == json.loads((b / rel).read_text())
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = tmp_path / "c"
    generate_dataset(c, 6, preset="tiny", seed=8, n_test=2)
    assert (a / "train.csv").read_bytes() != (c / "train.csv").read_bytes()


def test_full_preset_geometry_is_realistic() -> None:
    rng = np.random.default_rng(0)
    for modality in MODALITIES:
        for _ in range(20):
            g = plan_grid("full", modality, "axial", np.zeros(3), rng)
            assert g.cols in (256, 384, 512) and g.rows <= g.cols
            assert 0.39 <= g.row_spacing <= 1.0 and 0.39 <= g.col_spacing <= 1.06
            assert 0.5 <= g.slice_spacing <= 5.0 and 16 <= g.n_slices <= 400
            if modality == "CTA":
                assert g.cols == 512 and g.row_spacing <= 0.5


def test_cli_and_errors(tmp_path: Path) -> None:
    out = tmp_path / "d"
    args = ["synth", "--out", str(out), "--n-series", "4", "--preset", "tiny", "--seed", "3"]
    assert cli_main(args) == 0
    assert (out / "train.csv").exists() and (out / "test" / "solution.csv").exists()
    assert cli_main(args) == 2  # refuses to overwrite without --overwrite
    assert cli_main([*args, "--overwrite"]) == 0
    with pytest.raises(ValueError, match="modality"):
        make_series(tmp_path / "x", SeriesSpec(modality="PET"))
    with pytest.raises(ValueError, match="unknown location"):
        make_series(tmp_path / "x", SeriesSpec(locations=("Left Knee",)))
    make_series(tmp_path / "z", SeriesSpec())
    with pytest.raises(FileExistsError, match="already holds DICOM"):
        make_series(tmp_path / "z", SeriesSpec(seed=1))
    with pytest.raises(ValueError, match="preset"):
        generate_dataset(tmp_path / "y", 2, preset="huge")


def _assert_scorable(df: pl.DataFrame) -> None:
    """Every label column holds both classes (the metric's column-wise AUC is defined)."""
    for col in LABEL_COLS:
        assert sorted(df[col].unique().to_list()) == [0, 1], col


@pytest.mark.parametrize("n", [COVER_MIN_SERIES, 17, 23, 40])
def test_cover_labels_makes_every_column_scorable(n: int) -> None:
    for seed in range(6):
        plain = draw_cases(n, seed, "test")
        covered = draw_cases(n, seed, "test", cover_labels=True)
        df = cases_frame(covered, with_patient=True)
        _assert_scorable(df)
        # Only the labels change: UIDs, patients, demographics and the modality quota are the plain draw's.
        assert [(c.series_uid, c.patient_id, c.age, c.sex, c.modality) for c in covered] == [
            (c.series_uid, c.patient_id, c.age, c.sex, c.modality) for c in plain]
        assert all(1 <= len(c.locations) <= 3 for c in covered if c.positive)
        assert df.group_by("PatientID").agg(pl.col(LABEL_COLS).n_unique().max())[LABEL_COLS].max().row(0) == (
            1,) * len(LABEL_COLS)  # a patient's series share their labels
        assert sum(c.positive for c in covered) >= sum(c.positive for c in plain)


def test_cover_labels_leaves_the_default_draw_alone() -> None:
    # Fingerprint of the plain draw as it was before cover_labels existed (other tests and data depend on it).
    h = hashlib.sha256()
    for n in (5, 16, 24):
        for c in draw_cases(n, 3, "test"):
            h.update(repr(c).encode())
    assert h.hexdigest() == "521645a0afe75c2748d42060ab581ead26e40893fef01d189f00d2c08040320c"
    assert draw_cases(24, 3, "test", cover_labels=False) == draw_cases(24, 3, "test")
    # A draw that already covers every location comes back unchanged.
    plain = draw_cases(200, 1, "test")
    _assert_scorable(cases_frame(plain))
    assert draw_cases(200, 1, "test", cover_labels=True) == plain


def test_cover_labels_needs_a_big_enough_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"cover_labels needs at least {COVER_MIN_SERIES} series"):
        draw_cases(COVER_MIN_SERIES - 1, 0, "test", cover_labels=True)
    with pytest.raises(ValueError, match=f"test_cover_labels .* needs n_test >= {COVER_MIN_SERIES}, got 5"):
        generate_dataset(tmp_path / "x", 2, n_test=5, test_cover_labels=True)
    assert not (tmp_path / "x").exists()
    assert cli_main(["synth", "--out", str(tmp_path / "y"), "--n-series", "2", "--preset", "tiny", "--n-test", "5",
                     "--test-cover-labels"]) == 2


def test_cli_test_cover_labels_writes_a_scorable_solution(tmp_path: Path) -> None:
    out = tmp_path / "d"
    assert cli_main(["synth", "--out", str(out), "--n-series", "2", "--preset", "tiny", "--seed", "4",
                     "--test-cover-labels"]) == 0
    solution = pl.read_csv(out / "test" / "solution.csv")
    assert solution.height == COVER_MIN_SERIES  # the default n_test with the flag
    _assert_scorable(solution)
    expected = cases_frame(draw_cases(COVER_MIN_SERIES, 4, "test", cover_labels=True)).select(ID_COL, *LABEL_COLS)
    assert solution.equals(expected)
    assert pl.read_csv(out / "train.csv").equals(cases_frame(draw_cases(2, 4, "train")))  # train split untouched
