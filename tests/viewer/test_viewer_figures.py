"""The viewer's pure figure builders: slice orientation, windows, overlay, markers, the 3D scene, hot spots."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from rsna_aneurysm.viewer import figures
from rsna_aneurysm.viewer.hotspots import Hotspot, find_hotspots, nearest_distance


def _names(fig) -> list[str]:
    return [t.name for t in fig.data]


def _decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


@pytest.mark.parametrize("plane", figures.PLANES)
def test_slice_and_display_coordinates_agree(plane):
    shape = (7, 9, 11)
    k, j, i = 2, 3, 8
    arr = np.zeros(shape, np.float32)
    arr[k, j, i] = 1.0
    depth = {"axial": k, "coronal": j, "sagittal": i}[plane]
    img = figures.extract_slice(arr, plane, depth)
    col, row, d = figures.to_display(plane, k, j, i, shape)
    assert d == depth
    assert img[int(row), int(col)] == 1.0 and img.sum() == 1.0


def test_display_orientation_is_radiological_with_superior_up():
    shape = (10, 10, 10)
    # i grows towards the patient's left: it must land on the image's right in axial and coronal views.
    assert figures.to_display("axial", 0, 0, 9, shape)[0] > figures.to_display("axial", 0, 0, 0, shape)[0]
    # k grows towards superior: superior must be nearer the top (smaller row) in coronal and sagittal views.
    for plane in ("coronal", "sagittal"):
        assert figures.to_display(plane, 9, 0, 0, shape)[1] < figures.to_display(plane, 0, 0, 0, shape)[1]
    assert figures.PLANE_EDGES["axial"] == ("R", "L", "A", "P")


def test_window_presets_follow_modality_and_ct_window():
    cta = figures.window_presets("CTA", (-100.0, 700.0))
    lo, hi = cta["angio (W600 L200)"]
    assert lo == pytest.approx((-100 + 100) / 800) and hi == pytest.approx((500 + 100) / 800)
    assert next(iter(cta)) == "angio (W600 L200)"
    assert "angio (W600 L200)" not in figures.window_presets("MRA")
    rgb = figures.gray_rgb(np.array([[lo, (lo + hi) / 2, hi + 1]]), lo, hi)
    assert rgb.shape == (1, 3, 3) and rgb[0, :, 0].tolist() == [0, 128, 255]


def test_overlay_is_clear_below_the_threshold():
    heat = np.array([[0.1, 0.49, 0.5, 0.95]], np.float32)
    rgba = figures.overlay_rgba(heat, 0.5)
    assert rgba[0, :, 3].tolist() == [0, 0, 255, 255]
    assert not np.array_equal(rgba[0, 2, :3], rgba[0, 3, :3])  # colour follows the value
    assert _decode(figures.png_uri(rgba)).shape == (1, 4, 4)


def test_slice_figure_marks_truth_and_hot_spots_only_near_their_slice():
    arr = np.random.default_rng(0).random((20, 20, 20)).astype(np.float32)
    heat = np.zeros_like(arr)
    gt = [{"location": "Basilar Tip", "k": 10.2, "j": 5.0, "i": 7.0}]
    spot = Hotspot(10.0, 5.0, 7.0, 0.8, 12)
    near = figures.slice_figure(arr, "axial", (10, 4, 4), (0, 1), (1, 1, 1), heat=heat, gt_points=gt, hotspots=[spot])
    assert _names(near) == ["image", "probability", "cross-hair", "ground truth", "hot spots"]
    assert near.layout.title.text.startswith("axial k = 10")
    (gt_trace,) = [t for t in near.data if t.name == "ground truth"]
    assert (gt_trace.x[0], gt_trace.y[0]) == (7.0, 5.0) and gt_trace.text[0] == "Basilar Tip"
    far = figures.slice_figure(arr, "axial", (16, 4, 4), (0, 1), (1, 1, 1), heat=None, gt_points=gt, hotspots=[spot])
    assert _names(far) == ["image", "cross-hair"]
    # Anisotropic pixels keep their physical aspect ratio.
    cor = figures.slice_figure(arr, "coronal", (10, 4, 4), (0, 1), (0.5, 0.5, 2.0))
    assert cor.layout.yaxis.scaleratio == pytest.approx(4.0)


def test_volume_figure_labels_sides_and_sizes_hot_spots():
    arr = np.zeros((30, 30, 30), np.float32)
    mask = np.zeros_like(arr, dtype=np.uint8)
    mask[2:28, 2:28, 2:28] = 1
    arr[mask > 0] = 0.3
    arr[15, 15, 5:25] = 0.9  # a vessel inside the head
    arr[2, :, :] = 1.0  # a bright "skull" slab at the mask border
    gt = [{"location": "Anterior Communicating Artery", "k": 15.0, "j": 15.0, "i": 12.0}]
    spots = [Hotspot(15, 15, 12, 0.9, 30), Hotspot(10, 10, 10, 0.4, 3)]
    fig = figures.volume_figure(arr, (1.0, 1.0, 2.0), mask, "CTA", gt_points=gt, hotspots=spots)
    assert _names(fig) == ["vessels", "ground truth", "hot spots", "orientation"]
    vessels = fig.data[0]
    assert len(vessels.x) > 0 and set(np.round(vessels.z).tolist()) == {30.0}  # k = 15 at 2 mm; no skull voxel
    hot = fig.data[2]
    assert hot.marker.size[0] > hot.marker.size[1] and hot.marker.color[0] == 0.9
    text = dict(zip(fig.data[3].text, zip(fig.data[3].x, fig.data[3].y, fig.data[3].z)))
    assert text["L"][0] > text["R"][0] and text["P"][1] > text["A"][1] and text["S"][2] > text["I"][2]
    assert _names(figures.volume_figure(arr, (1, 1, 1), mask, context="surface"))[0] == "head surface"
    with pytest.raises(ValueError, match="unknown 3D context"):
        figures.volume_figure(arr, (1, 1, 1), context="mesh")


def test_find_hotspots_orders_regions_by_peak():
    heat = np.zeros((20, 20, 20), np.float32)
    heat[3:6, 3:6, 3:6] = 0.6
    heat[4, 4, 4] = 0.7
    heat[12:14, 12:14, 12:14] = 0.9
    heat[12, 12, 12] = 0.95
    heat[18, 18, 18] = 0.2  # below the threshold
    spots = find_hotspots(heat, 0.5)
    assert [(s.k, s.j, s.i) for s in spots] == [(12, 12, 12), (4, 4, 4)]
    assert spots[0].prob == pytest.approx(0.95) and spots[1].voxels == 27
    assert find_hotspots(heat, 0.99) == []
    assert len(find_hotspots(heat, 0.5, max_spots=1)) == 1
    assert nearest_distance(spots[1], [{"k": 4, "j": 4, "i": 7}], (1.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert nearest_distance(spots[1], [], (1.0, 1.0, 1.0)) == float("inf")


def test_context_points_leave_ct_bone_out():
    arr = np.full((40, 40, 40), 0.2, np.float32)
    mask = np.ones_like(arr, dtype=np.uint8)
    arr[20, 20, 10:30] = 0.6  # contrast in a vessel
    arr[5:35, 5:35, 30:33] = 1.0  # a thick bone plate deep inside the head mask
    with_bone = figures.context_points(arr, (1, 1, 1), mask, "CTA", erosion_mm=2.0)
    assert (with_bone[:, 2] >= 30).any()  # brightest voxels: the bone
    level = figures.bone_level("CTA", (-100.0, 700.0))
    assert level == pytest.approx(750 / 800) and figures.bone_level("MRA") is None
    pts = figures.context_points(arr, (1, 1, 1), mask, "CTA", erosion_mm=2.0, bone_level=level)
    assert len(pts) > 0 and set(pts[:, 0].tolist()) == {20.0} and pts[:, 2].max() < 30 - 4
