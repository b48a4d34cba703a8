"""A synthetic head in a canonical head frame: tissue ellipsoids, a circle-of-Willis vessel tree, aneurysms, pose.

Canonical head frame: LPS millimetres (x to the patient's left, y posterior, z superior), origin at the brain
centre. "Left" structures have positive x. Every shape exposes a signed distance (negative inside) evaluated on
arrays of head-frame coordinates, plus its bounding box, so the renderer can evaluate small shapes on small blocks.
A :class:`Pose` (rotation, translation, isotropic scale) places the head in the scanner's world frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...constants import LOCATION_COLS, SEG_LABEL_OF

BRAIN_SEMI_AXES = (70.0, 85.0, 65.0)  # a 140 x 170 x 130 mm brain


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid in the head frame, with an approximate signed distance."""

    center: tuple[float, float, float]
    semi_axes: tuple[float, float, float]

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Approximate signed distance in mm: (normalised radius - 1) times the mean semi-axis."""
        c, a = self.center, self.semi_axes
        s = np.sqrt(((x - c[0]) / a[0]) ** 2 + ((y - c[1]) / a[1]) ** 2 + ((z - c[2]) / a[2]) ** 2)
        return (s - 1.0) * (sum(a) / 3.0)

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        c, a = np.asarray(self.center), np.asarray(self.semi_axes)
        return c - a, c + a


@dataclass(frozen=True)
class Tissues:
    """The tissue ellipsoids of one head, outermost first (the renderer paints them in this order)."""

    neck: Ellipsoid = Ellipsoid((0.0, 15.0, -105.0), (50.0, 55.0, 50.0))
    scalp: Ellipsoid = Ellipsoid((0.0, 0.0, 0.0), (84.0, 99.0, 80.0))
    skull: Ellipsoid = Ellipsoid((0.0, 0.0, 0.0), (79.0, 94.0, 75.0))
    csf: Ellipsoid = Ellipsoid((0.0, 0.0, 0.0), (72.5, 87.5, 67.5))
    brain: Ellipsoid = Ellipsoid((0.0, 0.0, 0.0), BRAIN_SEMI_AXES)
    white_matter: Ellipsoid = Ellipsoid((0.0, 3.0, 8.0), (52.0, 64.0, 44.0))
    ventricles: tuple[Ellipsoid, ...] = (Ellipsoid((8.0, 5.0, 12.0), (6.0, 24.0, 9.0)),
                                         Ellipsoid((-8.0, 5.0, 12.0), (6.0, 24.0, 9.0)))
    cistern: Ellipsoid = Ellipsoid((0.0, 2.0, -26.0), (26.0, 24.0, 8.0))  # CSF around the circle of Willis


@dataclass(frozen=True)
class Segment:
    """A tapered tube (capsule) from ``p0`` to ``p1`` belonging to one location of the vessel tree."""

    p0: np.ndarray
    p1: np.ndarray
    r0: float
    r1: float
    location: str
    name: str = ""  # the vessel (e.g. "M1"), where the builder knows it

    @property
    def label(self) -> int:
        return SEG_LABEL_OF[self.location]

    @property
    def length(self) -> float:
        return float(np.linalg.norm(self.p1 - self.p0))

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, radius_scale: float = 1.0) -> np.ndarray:
        d = self.p1 - self.p0
        dx, dy, dz = x - self.p0[0], y - self.p0[1], z - self.p0[2]
        t = np.clip((dx * d[0] + dy * d[1] + dz * d[2]) / float(d @ d), 0.0, 1.0)
        ex, ey, ez = dx - t * d[0], dy - t * d[1], dz - t * d[2]
        r = (self.r0 + t * (self.r1 - self.r0)) * radius_scale
        return np.sqrt(ex * ex + ey * ey + ez * ez) - r

    def bbox(self, radius_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        r = max(self.r0, self.r1) * radius_scale
        return np.minimum(self.p0, self.p1) - r, np.maximum(self.p0, self.p1) + r


# Left half of the tree as polylines (head frame, mm) with radii at the end points; mirrored for the right.
_LEFT_POLYLINES: dict[str, list[tuple[list[tuple[float, float, float]], float, float]]] = {
    "Infraclinoid Internal Carotid Artery": [
        ([(22, 2, -80), (21, 0, -62), (19, -6, -50), (17, -10, -42), (15, -8, -33)], 2.5, 2.3)],
    "Supraclinoid Internal Carotid Artery": [([(15, -8, -33), (15.5, -4, -27), (14, -2, -22)], 2.3, 2.1)],
    "Middle Cerebral Artery": [
        ([(14, -2, -22), (28, -1, -21), (42, 2, -19)], 1.6, 1.5),
        ([(42, 2, -19), (50, -4, -10), (56, -6, 2)], 1.2, 1.0),
        ([(42, 2, -19), (52, 9, -15), (58, 18, -6)], 1.2, 1.0)],
    "Anterior Cerebral Artery": [
        ([(14, -2, -22), (8, -8, -20), (3, -12, -19)], 1.3, 1.2),
        ([(3, -12, -19), (3, -22, -8), (3, -32, 12), (3, -26, 34)], 1.2, 1.0)],
    "Posterior Communicating Artery": [([(15.5, -4, -27), (13, 3, -26), (9, 14, -25)], 1.0, 1.0)],
}
_LEFT_POSTERIOR: list[tuple[list[tuple[float, float, float]], float, float]] = [
    ([(10, 32, -92), (6, 25, -74), (0, 20, -63)], 1.6, 1.5),  # vertebral artery
    ([(0, 15, -27), (9, 14, -25), (22, 25, -22), (32, 42, -15), (35, 60, -8)], 1.3, 1.0),  # PCA P1-P2
    ([(0, 16, -33), (10, 20, -35), (22, 30, -34)], 1.0, 0.9),  # superior cerebellar artery
]
_MIDLINE: dict[str, list[tuple[list[tuple[float, float, float]], float, float]]] = {
    "Anterior Communicating Artery": [([(3, -12, -19), (-3, -12, -19)], 1.0, 1.0)],
    "Other Posterior Circulation": [([(0, 20, -63), (0, 17, -40)], 1.8, 1.7)],  # basilar trunk
    "Basilar Tip": [([(0, 17, -40), (0, 15, -27)], 1.7, 1.7)],
}
# Where each location's typical aneurysm site is (left side; mirrored for right): the landmarks of the truth file.
_LEFT_LANDMARKS: dict[str, tuple[float, float, float]] = {
    "Infraclinoid Internal Carotid Artery": (17, -10, -42),
    "Supraclinoid Internal Carotid Artery": (15.5, -4, -27),
    "Middle Cerebral Artery": (42, 2, -19),
    "Anterior Cerebral Artery": (3, -22, -8),
    "Posterior Communicating Artery": (13, 3, -26),
}
_MIDLINE_LANDMARKS: dict[str, tuple[float, float, float]] = {
    "Anterior Communicating Artery": (0, -12, -19),
    "Basilar Tip": (0, 15, -27),
    "Other Posterior Circulation": (22, 25, -22),  # left PCA P2: the commonest "other posterior" site
}
COW_CENTER = np.array([0.0, 3.0, -25.0])


def _polyline_segments(points: list[tuple[float, float, float]], r0: float, r1: float, location: str,
                       mirror: bool) -> list[Segment]:
    p = np.asarray(points, dtype=np.float64)
    if mirror:
        p = p * np.array([-1.0, 1.0, 1.0])
    cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
    radii = r0 + (r1 - r0) * cum / cum[-1]
    return [Segment(p[i], p[i + 1], float(radii[i]), float(radii[i + 1]), location) for i in range(len(p) - 1)]


def vessel_tree() -> list[Segment]:
    """All vessel segments of the canonical tree, in label order (so the AComA, label 13, is painted last)."""
    segs: list[Segment] = []
    for side, mirror in (("Left", False), ("Right", True)):
        for name, lines in _LEFT_POLYLINES.items():
            for pts, r0, r1 in lines:
                segs += _polyline_segments(pts, r0, r1, f"{side} {name}", mirror)
        for pts, r0, r1 in _LEFT_POSTERIOR:
            segs += _polyline_segments(pts, r0, r1, "Other Posterior Circulation", mirror)
    for name, lines in _MIDLINE.items():
        for pts, r0, r1 in lines:
            segs += _polyline_segments(pts, r0, r1, name, False)
    return sorted(segs, key=lambda s: s.label)


def landmarks() -> dict[str, np.ndarray]:
    """Head-frame position of each of the 13 locations' typical aneurysm site."""
    out: dict[str, np.ndarray] = {}
    for name in LOCATION_COLS:
        if name.startswith(("Left ", "Right ")):
            side, base = name.split(" ", 1)
            p = np.asarray(_LEFT_LANDMARKS[base], dtype=np.float64)
            out[name] = p * np.array([-1.0, 1.0, 1.0]) if side == "Right" else p
        else:
            out[name] = np.asarray(_MIDLINE_LANDMARKS[name], dtype=np.float64)
    return out


@dataclass(frozen=True)
class Aneurysm:
    """A saccular blob: an ellipsoid elongated along ``axis`` (outward from its parent vessel)."""

    location: str
    center: np.ndarray  # head frame, mm
    radius: float  # head-frame mm, across the axis
    elongation: float  # semi-axis along ``axis`` = radius * elongation
    axis: np.ndarray  # unit vector
    attach: np.ndarray  # point on the parent vessel's centre line
    site: str = ""  # bench preset: bifurcation | bend | origin | sidewall | straight

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        along = dx * self.axis[0] + dy * self.axis[1] + dz * self.axis[2]
        across2 = np.maximum(dx * dx + dy * dy + dz * dz - along * along, 0.0)
        s = np.sqrt(across2 / self.radius**2 + (along / (self.radius * self.elongation)) ** 2)
        return (s - 1.0) * self.radius

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        r = self.radius * self.elongation
        return self.center - r, self.center + r


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def draw_aneurysm(location: str, radius: float, rng: np.random.Generator, tree: list[Segment],
                  vessel_scale: float = 1.0) -> Aneurysm:
    """An aneurysm of head-frame ``radius`` on a random point of one of ``location``'s segments, bulging outward."""
    segs = [s for s in tree if s.location == location]
    if not segs:
        raise ValueError(f"no vessel segment for location {location!r}")
    if location == "Basilar Tip":
        seg, t = segs[-1], 1.0
        d = _unit(seg.p1 - seg.p0)
        axis = _unit(d + 0.35 * rng.normal(size=3))
    else:
        # Weight segments by length; favour the proximal segment of MCA and ACA (M1, A1 and their bifurcations)
        # and leave out the petrous part of the infraclinoid ICA (cavernous aneurysms are the common ones).
        w = np.array([s.length for s in segs])
        if "Infraclinoid" in location:
            w[0] = 0.0
        elif "Middle Cerebral" in location or "Anterior Cerebral" in location:
            w[0] *= 2.0
        seg = segs[int(rng.choice(len(segs), p=w / w.sum()))]
        t = float(rng.uniform(0.2, 0.8))
        d = _unit(seg.p1 - seg.p0)
        out = (seg.p0 + t * (seg.p1 - seg.p0)) - COW_CENTER
        out = out - (out @ d) * d
        rand = rng.normal(size=3)
        rand -= (rand @ d) * d
        axis = _unit((_unit(out) if np.linalg.norm(out) > 1e-6 else 0) + 0.8 * _unit(rand))
        axis = _unit(axis - (axis @ d) * d)
    attach = seg.p0 + t * (seg.p1 - seg.p0)
    vr = (seg.r0 + t * (seg.r1 - seg.r0)) * vessel_scale
    elongation = float(rng.uniform(1.0, 1.3))
    center = attach + axis * (0.5 * vr + 0.8 * radius * elongation)
    return Aneurysm(location, center, float(radius), elongation, axis, attach)


@dataclass
class Pose:
    """Head frame -> world (LPS mm): ``world = translation + scale * rotation @ head``."""

    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    scale: float = 1.0

    def to_world(self, p: np.ndarray) -> np.ndarray:
        return self.translation + self.scale * (np.asarray(p, dtype=np.float64) @ self.rotation.T)

    def to_head(self, w: np.ndarray) -> np.ndarray:
        return ((np.asarray(w, dtype=np.float64) - self.translation) @ self.rotation) / self.scale


def rotation_matrix(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation about x, then y, then z by the given angles in degrees."""
    ax, ay, az = np.deg2rad(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def draw_pose(rng: np.random.Generator, max_angle_deg: float = 15.0, max_shift_mm: float = 25.0) -> Pose:
    """A random head pose: rotation up to ``max_angle_deg`` about each axis, a few cm shift, scale 0.9-1.1."""
    return Pose(rotation=rotation_matrix(rng.uniform(-max_angle_deg, max_angle_deg, size=3)),
                translation=rng.uniform(-max_shift_mm, max_shift_mm, size=3), scale=float(rng.uniform(0.9, 1.1)))
