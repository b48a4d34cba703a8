"""One synthetic series: draw anatomy and geometry from a spec, render, write DICOM, return the ground truth."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ...constants import LOCATION_COLS, MODALITIES
from ...io.nifti import write_volume
from ...volume import Volume
from .anatomy import COW_CENTER, Tissues, draw_aneurysm, draw_pose, landmarks, vessel_tree
from .bench_anatomy import bench_tree, draw_bench_aneurysm, draw_diameter_mm, draw_lookalikes
from .bench_style import draw_bench_style, lookalike_layers
from .dicom_writer import PixelEncoding, SeriesHeader, draw_encoding, write_multiframe, write_slices
from .geometry import PLANES, PRESETS, Grid, fit_points, plan_grid, plane_cosines
from .labels import POSITIVE_RATE, draw_locations, label_profile, make_uid
from .render import Scene, draw_style, render

TILT_RATE = 0.25
# ``bench``: the head-frame point each modality's field of view is centred on (the circle of Willis, a little
# lower for CTA and MRA so the cavernous ICA is in, the whole brain's centre region for T2 and T1post).
BENCH_FOCUS: dict[str, tuple[float, float, float]] = {
    "CTA": (0.0, 0.0, -20.0), "MRA": (0.0, 3.0, -27.0), "MRI T2": (0.0, 0.0, -15.0), "MRI T1post": (0.0, 0.0, -18.0)}


@dataclass
class SeriesSpec:
    """Everything that defines one synthetic series; what is not given here is drawn from ``seed``."""

    modality: str = "CTA"  # one of constants.MODALITIES
    plane: str = "axial"  # axial | coronal | sagittal
    preset: str = "tiny"  # tiny | small | full | bench (realistic anatomy, contrast and look-alikes)
    multiframe: bool = False  # one enhanced multi-frame file instead of one file per slice
    multiframe_no_geometry: bool = False  # strip PixelSpacing + ImageOrientationPatient everywhere
    reversed: bool = False  # IPP decreasing with InstanceNumber (multi-frame: frames stored top first)
    shuffle_instance_numbers: bool = False  # InstanceNumber unrelated to position (multi-frame: frames shuffled)
    odd_slice: bool = False  # one extra slice of another size/orientation mixed in (single-frame only)
    test_tags_only: bool = False  # strip to constants.TEST_TAGS_WITH_DATA
    locations: tuple[str, ...] | None = None  # aneurysm locations; None = drawn; () = no aneurysm
    transfer_syntax: str | None = None  # e.g. pydicom.uid.RLELossless; None = Explicit VR Little Endian
    seed: int = 0
    monochrome1: bool = False  # MR only: pixels stored inverted
    tilt: bool | None = None  # slice plane tilted up to 10 degrees; None = drawn (25 %)
    patient_id: str | None = None  # None = derived from the series UID
    patient_age: int | None = None  # written as PatientAge when given (train files)
    patient_sex: str | None = None  # Female | Male, written as PatientSex when given

    def validate(self) -> None:
        """Raise ValueError naming the field when the spec is inconsistent."""
        if self.modality not in MODALITIES:
            raise ValueError(f"SeriesSpec.modality {self.modality!r} is not one of {MODALITIES}")
        if self.plane not in PLANES:
            raise ValueError(f"SeriesSpec.plane {self.plane!r} is not one of {PLANES}")
        if self.preset not in PRESETS:
            raise ValueError(f"SeriesSpec.preset {self.preset!r} is not one of {PRESETS}")
        if self.multiframe_no_geometry and not self.multiframe:
            raise ValueError("SeriesSpec.multiframe_no_geometry needs multiframe=True")
        if self.odd_slice and self.multiframe:
            raise ValueError("SeriesSpec.odd_slice applies to single-frame series only")
        if self.monochrome1 and self.modality == "CTA":
            raise ValueError("SeriesSpec.monochrome1 applies to MR modalities only")
        if self.patient_sex not in (None, "Female", "Male"):
            raise ValueError(f"SeriesSpec.patient_sex {self.patient_sex!r} is not Female or Male")
        for loc in self.locations or ():
            if loc not in LOCATION_COLS:
                raise ValueError(f"SeriesSpec.locations: unknown location {loc!r}")


def coordinates_str(x: float, y: float, f: int | None = None) -> str:
    """The train_localizers.csv ``coordinates`` string: ``{'x': 258.36, 'y': 261.36}`` (plus ``'f'``)."""
    d: dict[str, float | int] = {"x": round(float(x), 2), "y": round(float(y), 2)}
    if f is not None:
        d["f"] = int(f)
    return repr(d)


def _aneurysm_radius_mm(preset: str, in_plane_mm: float, rng: np.random.Generator) -> float:
    """1-6 mm (most 1.5-3.5); coarse presets scale small ones up so they stay a few voxels wide.

    In ``small`` (about 2 mm pixels) the floor is 1.6-2.2 pixels of radius, so a sac is 3 to 4 pixels across and
    its round shape stands out from its parent artery (the internal carotid is 2.1-2.5 mm in radius here). On real
    CTA (0.4-0.5 mm pixels) a 2.5 mm sac already spans 10 pixels. A floor of one pixel made sac and siphon the
    same blob, and the demo's fine model could not tell them apart (docs/synthetic_data.md).
    """
    r = 1.0 + 5.0 * float(rng.beta(1.5, 4.0))
    if preset == "tiny":
        r = max(r, float(rng.uniform(1.2, 1.6)) * in_plane_mm)
    elif preset == "small":
        r = max(r, float(rng.uniform(1.6, 2.2)) * in_plane_mm)
    return r


def _odd_grid(grid: Grid, plane: str, center: np.ndarray, rng: np.random.Generator) -> tuple[Grid, str]:
    """A one-slice grid unlike the series: an orthogonal scout, or a same-plane slice with another matrix."""
    if rng.random() < 0.5:
        other = [p for p in PLANES if p != plane][int(rng.integers(2))]
        row_cos, col_cos = plane_cosines(other)
        kind = "scout"
        rows = cols = max(16, int(grid.cols * 3 // 4))
        px = round(260.0 / cols, 6)
    else:
        row_cos, col_cos = grid.row_cos, grid.col_cos
        kind = "size"
        rows, cols = max(16, grid.rows // 2), max(16, grid.cols // 2)
        px = round(grid.row_spacing * 2, 6)
    odd = replace(grid, rows=rows, cols=cols, n_slices=1, row_spacing=px, col_spacing=px,
                  slice_thickness=max(grid.slice_thickness, 2.0), row_cos=row_cos, col_cos=col_cos)
    half = (np.array([cols, rows, 1], dtype=np.float64) - 1.0) / 2.0
    origin = np.asarray(center) - odd.direction @ (np.asarray(odd.spacing_ijk) * half)
    return replace(odd, origin=tuple(round(float(v), 5) for v in origin)), kind


def _orders(n: int, spec: SeriesSpec, rng: np.random.Generator) -> list[int]:
    """For single-frame: InstanceNumber of sorted slice k. For multi-frame: the sorted slice of stored frame f."""
    if spec.multiframe:
        if spec.test_tags_only:  # test files locate frames from the first position + spacing: keep them sorted
            return list(range(n))
        if spec.reversed:
            return list(range(n - 1, -1, -1))
        if spec.shuffle_instance_numbers:
            return [int(v) for v in rng.permutation(n)]
        return list(range(n))
    numbers = list(range(n, 0, -1)) if spec.reversed else list(range(1, n + 1))
    if spec.shuffle_instance_numbers:
        numbers = [int(v) for v in rng.permutation(numbers)]
    return numbers


def _seg_dtype(truth: np.ndarray) -> str:
    return "int16" if truth.min() >= -32768 and truth.max() <= 32767 else "float32"


def make_series(out_dir: Path, spec: SeriesSpec, series_uid: str | None = None, *, seg_dir: Path | None = None,
                keep_volume: bool = True) -> dict:
    """Write ``out_dir/<sop>.dcm`` for one series and return its truth.

    The truth holds the ``synth_truth.json`` entry's keys plus ``series_uid``, ``localizers`` (train_localizers.csv
    rows as dicts with ``x``, ``y``, ``f``) and, with ``keep_volume``, ``volume``: the rendered
    :class:`~rsna_aneurysm.volume.Volume` (``[k, j, i]`` in sorted-slice order, float32 modality units, exactly what
    a correct reader recovers). With ``seg_dir``, also writes ``seg_dir/<uid>.nii`` and ``<uid>_cowseg.nii``.
    """
    spec.validate()
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.glob("*.dcm")):
        raise FileExistsError(f"{out_dir}: already holds DICOM files; a series folder must start empty")
    rng = np.random.default_rng([spec.seed, 97])
    uid = series_uid or make_uid(spec.seed, "make_series", repr(spec))
    bench = spec.preset == "bench"
    locations = spec.locations
    if locations is None:
        locations = draw_locations(rng, label_profile(spec.preset)) if rng.random() < POSITIVE_RATE else ()
    pose = draw_pose(rng)
    tilt = spec.tilt if spec.tilt is not None else bool(rng.random() < TILT_RATE)
    if bench:
        focus = np.asarray(BENCH_FOCUS[spec.modality])
    else:
        focus = COW_CENTER + np.array([0.0, 0.0, -5.0]) if spec.modality == "MRA" else np.array([0.0, 0.0, -15.0])
    grid = plan_grid(spec.preset, spec.modality, spec.plane, pose.to_world(focus), rng, tilt=tilt)
    in_plane = float(np.sqrt(grid.row_spacing * grid.col_spacing))
    lookalikes = None
    if bench:  # its own generator: the anatomy does not shift the draws of the grid, style and encoding
        bench_rng = np.random.default_rng([spec.seed, 101])
        vessel_scale = 1.0
        tree = bench_tree(bench_rng, pose.scale)
        aneurysms = [draw_bench_aneurysm(loc, draw_diameter_mm(bench_rng), bench_rng, tree, pose.scale)
                     for loc in locations]
        lookalikes = draw_lookalikes(tree, bench_rng, pose.scale)
    else:
        vessel_scale = max(1.0, 0.5 * in_plane / pose.scale)
        tree = vessel_tree()
        aneurysms = [draw_aneurysm(loc, _aneurysm_radius_mm(spec.preset, in_plane, rng) / pose.scale, rng, tree,
                                   vessel_scale) for loc in locations]
    centers = np.array([pose.to_world(a.center) for a in aneurysms]).reshape(-1, 3)
    grid = fit_points(grid, centers)
    scene = Scene(pose=pose, tissues=Tissues(), vessels=tree, aneurysms=aneurysms, vessel_scale=vessel_scale)
    if lookalikes is None:
        style = draw_style(spec.modality, rng)
    else:
        style, la_values = draw_bench_style(spec.modality, rng)
        scene.vessels = sorted(tree + lookalikes.arteries, key=lambda seg: seg.label)
        scene.under, scene.over = lookalike_layers(lookalikes, la_values)
    enc: PixelEncoding = draw_encoding(spec.modality, rng, spec.monochrome1)
    values, labels = render(grid, scene, style, rng, with_labels=seg_dir is not None)
    stored, truth_values = enc.encode(values, inplace=True)

    header = SeriesHeader(series_uid=uid, study_uid=make_uid(spec.seed, uid, "study"),
                          frame_of_reference_uid=make_uid(spec.seed, uid, "frame-of-reference"),
                          patient_id=spec.patient_id or f"SYN{uid[-12:]}", modality=spec.modality,
                          patient_age=None if spec.test_tags_only else spec.patient_age,
                          patient_sex=None if spec.test_tags_only else spec.patient_sex)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = grid.n_slices
    order = _orders(n, spec, rng)
    odd_sop, odd_kind = None, None
    if spec.multiframe:
        sop = make_uid(spec.seed, uid, "sop", 0)
        write_multiframe(out_dir, header, enc, grid, stored, sop, order, no_geometry=spec.multiframe_no_geometry,
                         test_tags_only=spec.test_tags_only, transfer_syntax=spec.transfer_syntax)
        sop_of_k = [sop] * n
        frame_of_k: list[int | None] = [0] * n
        for f, k in enumerate(order):
            frame_of_k[k] = f
    else:
        sop_of_k = [make_uid(spec.seed, uid, "sop", k) for k in range(n)]
        frame_of_k = [None] * n
        write_slices(out_dir, header, enc, grid, stored, list(range(n)), sop_of_k, order,
                     spacing_between=bool(rng.random() < 0.5), test_tags_only=spec.test_tags_only,
                     transfer_syntax=spec.transfer_syntax)
        if spec.odd_slice:
            odd, odd_kind = _odd_grid(grid, spec.plane, pose.to_world(np.zeros(3)), rng)
            odd_values, _ = render(odd, scene, style, rng)
            odd_stored, _ = enc.encode(odd_values)
            odd_sop = make_uid(spec.seed, uid, "sop", "odd")
            image_type = ("ORIGINAL", "PRIMARY", "LOCALIZER") if odd_kind == "scout" else ("ORIGINAL", "PRIMARY")
            write_slices(out_dir, header, enc, odd, odd_stored, [0], [odd_sop], [n + 1],
                         test_tags_only=spec.test_tags_only, transfer_syntax=spec.transfer_syntax,
                         image_type=image_type)
    del stored

    localizers, truth_aneurysms = [], []
    for an, c in zip(aneurysms, centers, strict=True):
        i, j, kf = grid.world_to_index(c)
        k = int(np.clip(np.rint(kf), 0, n - 1))
        row = {"SOPInstanceUID": sop_of_k[k], "x": round(float(i), 2), "y": round(float(j), 2),
               "f": frame_of_k[k], "location": an.location}
        localizers.append(row)
        truth_aneurysms.append({"location": an.location, "center_lps": [float(v) for v in c],
                                "radius_mm": float(an.radius * pose.scale), "elongation": an.elongation,
                                "slice_k": k, "sop_uid": row["SOPInstanceUID"], "frame": row["f"]})
        if bench:
            truth_aneurysms[-1] |= {"site": an.site, "attach_lps": [float(v) for v in pose.to_world(an.attach)]}
    volume = grid.volume(truth_values, spec.modality, meta={
        "sop_uids": sop_of_k, "frames": frame_of_k if spec.multiframe else None, "series_uid": uid,
        "spacing_guessed": False, "warnings": []})
    if seg_dir is not None:
        seg_dir = Path(seg_dir)
        write_volume(volume, seg_dir / f"{uid}.nii", dtype=_seg_dtype(truth_values))
        write_volume(grid.volume(labels), seg_dir / f"{uid}_cowseg.nii", dtype="uint8")

    truth = {
        "series_uid": uid, "split": "test" if spec.test_tags_only else "train", "modality": spec.modality,
        "plane": spec.plane, "preset": spec.preset,
        "multiframe": spec.multiframe, "multiframe_no_geometry": spec.multiframe_no_geometry,
        "reversed": spec.reversed, "shuffle_instance_numbers": spec.shuffle_instance_numbers,
        "odd_slice": spec.odd_slice, "odd_slice_sop": odd_sop, "odd_slice_kind": odd_kind, "tilted": tilt,
        "test_tags_only": spec.test_tags_only, "transfer_syntax": spec.transfer_syntax,
        "photometric": enc.photometric, "bits_stored": enc.bits_stored, "pixel_representation": int(enc.signed),
        "rescale_intercept": enc.intercept, "patient_id": header.patient_id,
        "shape_kji": list(grid.shape_kji), "spacing": list(grid.spacing_ijk),
        "pixel_spacing": [grid.row_spacing, grid.col_spacing], "slice_thickness": grid.slice_thickness,
        "origin": list(grid.origin), "direction": grid.direction.tolist(),
        "aneurysms": truth_aneurysms,
        "landmarks_lps": {name: [float(v) for v in pose.to_world(p)] for name, p in landmarks().items()},
        "pose": {"rotation": pose.rotation.tolist(), "translation": pose.translation.tolist(), "scale": pose.scale},
        "vessel_radius_scale": vessel_scale, "has_segmentation": seg_dir is not None,
        "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(spec).items()},
        "localizers": localizers,
    }
    if lookalikes is not None:  # bench only, so the other presets' truth files stay as they were
        truth["lookalikes"] = [{"kind": kind, "center_lps": [float(v) for v in pose.to_world(c)]}
                               for kind, c in lookalikes.kinds]
    if keep_volume:
        truth["volume"] = volume
    return truth


def localizer_world(volume: Volume, row: dict) -> np.ndarray:
    """World LPS position of a localizer row on the truth volume's grid (helper for tests and sanity checks)."""
    k = volume.meta["sop_uids"].index(row["SOPInstanceUID"]) if row.get("f") is None else \
        volume.meta["frames"].index(row["f"])
    return volume.index_to_world((row["x"], row["y"], k))
