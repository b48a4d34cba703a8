"""The ``bench`` preset's anatomy: real vessel calibres, tortuosity, aneurysms at bifurcations and bends, look-alikes.

The other presets keep the schematic tree of :mod:`.anatomy` untouched. Here every vessel gets a real diameter
(world mm, divided by the pose scale so the written images show it), interior bends are jittered per series, and
aneurysms sit where real ones do: at the apex of a bifurcation (MCA bifurcation, ICA terminus, basilar tip), at the
origin of a small branch (PComA, AComA) or on the outer wall of a bend. Look-alikes that are not aneurysms (and get
no localizer) are drawn beside them: tight loops of small arteries, infundibula at branch origins, veins and
sinuses, small bright (or on T2 dark) dots, and the skull base's bone and air next to the carotid siphon.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .anatomy import _LEFT_POLYLINES, _LEFT_POSTERIOR, _MIDLINE, COW_CENTER, Aneurysm, Ellipsoid, Segment

# Diameter (world mm) at the start and end of each vessel, before per-series variation.
BENCH_CALIBRES_MM: dict[str, tuple[float, float]] = {
    "ICA cavernous": (4.8, 4.5), "ICA supraclinoid": (4.4, 4.1), "M1": (3.1, 2.8), "M2": (2.1, 1.8),
    "A1": (2.1, 1.9), "A2": (2.0, 1.7), "PComA": (1.35, 1.15), "AComA": (1.6, 1.5), "vertebral": (3.2, 3.0),
    "PCA": (2.1, 1.8), "SCA": (1.3, 1.1), "basilar": (3.2, 3.0), "basilar tip": (3.0, 2.9),
}
# Names of the polylines of anatomy's tables, in their order.
_LEFT_NAMES: dict[str, tuple[str, ...]] = {
    "Infraclinoid Internal Carotid Artery": ("ICA cavernous",), "Supraclinoid Internal Carotid Artery":
    ("ICA supraclinoid",), "Middle Cerebral Artery": ("M1", "M2", "M2"), "Anterior Cerebral Artery": ("A1", "A2"),
    "Posterior Communicating Artery": ("PComA",),
}
_POSTERIOR_NAMES = ("vertebral", "PCA", "SCA")
_MIDLINE_NAMES = {"Anterior Communicating Artery": ("AComA",), "Other Posterior Circulation": ("basilar",),
                  "Basilar Tip": ("basilar tip",)}
SERIES_CALIBRE_SPREAD = 0.05  # one factor per series, uniform in 1 +- this
VESSEL_CALIBRE_SPREAD = 0.03  # and one per vessel
TORTUOSITY_MM = 1.2  # sd of the jitter of unshared interior vertices (clipped at 2.5 mm)
SUBDIVIDE_MM = 14.0  # longer pieces get a jittered midpoint: a gentle extra bend
# Aneurysm diameters (world mm): log-normal, median 4 mm: ~42 % 2-4 mm, ~87 % under 7 mm, ~3 % over 10 mm.
DIAMETER_MEDIAN_MM, DIAMETER_SIGMA, DIAMETER_RANGE_MM = 4.0, 0.5, (1.5, 12.0)
SIDEWALL_RATE = 0.08  # aneurysms on a random sidewall point instead of a vertex site
# Site weights: bifurcation apices and branch origins first (most real aneurysms), then bends by their angle.
SITE_WEIGHTS = {"bifurcation": 4.0, "origin": 5.0, "straight": 0.1}  # a bend: 0.3 + angle / 40 degrees, up to 2
ORIGIN_LOCATIONS = ("Posterior Communicating Artery", "Anterior Communicating Artery")


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _key(p: np.ndarray) -> tuple[float, float, float]:
    return tuple(round(float(v), 3) for v in p)


def _polylines() -> list[tuple[str, str, np.ndarray]]:
    """(location, vessel name, points) of the whole tree, head frame, left then right then midline."""
    out = []
    for side, sx in (("Left", 1.0), ("Right", -1.0)):
        m = np.array([sx, 1.0, 1.0])
        for base, lines in _LEFT_POLYLINES.items():
            for (pts, _, _), name in zip(lines, _LEFT_NAMES[base], strict=True):
                out.append((f"{side} {base}", name, np.asarray(pts, dtype=np.float64) * m))
        for (pts, _, _), name in zip(_LEFT_POSTERIOR, _POSTERIOR_NAMES, strict=True):
            out.append(("Other Posterior Circulation", name, np.asarray(pts, dtype=np.float64) * m))
    for loc, lines in _MIDLINE.items():
        for (pts, _, _), name in zip(lines, _MIDLINE_NAMES[loc], strict=True):
            out.append((loc, name, np.asarray(pts, dtype=np.float64)))
    return out


def bench_tree(rng: np.random.Generator, scale: float = 1.0) -> list[Segment]:
    """The vessel tree with real calibres (world diameter / ``scale`` in the head frame) and per-series tortuosity.

    Segments are named after their vessel (``Segment.name``) and sorted by label, as :func:`.anatomy.vessel_tree`.
    """
    lines = _polylines()
    count: dict[tuple, int] = {}
    for _, _, pts in lines:
        for p in pts:
            count[_key(p)] = count.get(_key(p), 0) + 1
    g = 1.0 + float(rng.uniform(-SERIES_CALIBRE_SPREAD, SERIES_CALIBRE_SPREAD))
    segs: list[Segment] = []
    for loc, name, pts in lines:
        pts = pts.copy()
        for i in range(1, len(pts) - 1):  # bends that no other vessel shares move: tortuosity
            if count[_key(pts[i])] == 1:
                pts[i] += np.clip(rng.normal(0.0, TORTUOSITY_MM, size=3), -2.5, 2.5)
        fine = [pts[0]]
        for a, b in zip(pts[:-1], pts[1:], strict=True):
            if np.linalg.norm(b - a) > SUBDIVIDE_MM:
                d = _unit(b - a)
                off = rng.normal(0.0, TORTUOSITY_MM, size=3)
                fine.append(0.5 * (a + b) + np.clip(off - (off @ d) * d, -2.5, 2.5))
            fine.append(b)
        p = np.asarray(fine)
        f = g * (1.0 + float(rng.uniform(-VESSEL_CALIBRE_SPREAD, VESSEL_CALIBRE_SPREAD)))
        d0, d1 = BENCH_CALIBRES_MM[name]
        cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(p, axis=0), axis=1))])
        r = (d0 + (d1 - d0) * cum / cum[-1]) * f / 2.0 / scale
        segs += [Segment(p[i], p[i + 1], float(r[i]), float(r[i + 1]), loc, name) for i in range(len(p) - 1)]
    return sorted(segs, key=lambda s: s.label)


@dataclass
class _Vertex:
    point: np.ndarray
    ins: list[Segment] = field(default_factory=list)  # segments ending here (flow arrives)
    outs: list[Segment] = field(default_factory=list)  # segments starting here

    @property
    def degree(self) -> int:
        return len(self.ins) + len(self.outs)


def _vertices(tree: list[Segment]) -> dict[tuple, _Vertex]:
    vs: dict[tuple, _Vertex] = {}
    for s in tree:
        vs.setdefault(_key(s.p0), _Vertex(s.p0)).outs.append(s)
        vs.setdefault(_key(s.p1), _Vertex(s.p1)).ins.append(s)
    return vs


@dataclass(frozen=True)
class Site:
    """A place an aneurysm of ``location`` may grow: a vertex of the tree, its kind, weight and bulge direction."""

    point: np.ndarray
    kind: str  # bifurcation | bend | origin | straight
    weight: float
    axis: np.ndarray  # unit: the flow's impact direction (bifurcation apex, outer wall of a bend)
    along: Segment  # the segment of ``location`` the neck may slide onto


def aneurysm_sites(tree: list[Segment], location: str) -> list[Site]:
    """Vertex sites of ``location``: its bends and distal bifurcations, and for PComA / AComA their origin."""
    sites = []
    for v in _vertices(tree).values():
        ins = [s for s in v.ins if s.location == location]
        outs = [s for s in v.outs if s.location == location]
        if "Anterior Cerebral" in location and any(s.location == "Anterior Communicating Artery"
                                                   for s in v.ins + v.outs):
            continue  # the A1 / AComA junction counts as AComA, as annotators label it
        if ins and v.degree >= 3:
            sites.append(Site(v.point, "bifurcation", SITE_WEIGHTS["bifurcation"], _unit(ins[0].p1 - ins[0].p0),
                              ins[0]))
        elif ins and v.outs:
            a, b = _unit(ins[0].p1 - ins[0].p0), _unit(v.outs[0].p1 - v.outs[0].p0)
            angle = float(np.degrees(np.arccos(np.clip(a @ b, -1.0, 1.0))))
            if angle < 15.0:
                sites.append(Site(v.point, "straight", SITE_WEIGHTS["straight"], _unit(np.cross(a, [0.3, 0.5, 0.8])),
                                  ins[0]))
            else:
                sites.append(Site(v.point, "bend", min(2.0, 0.3 + angle / 40.0), _unit(a - b), ins[0]))
        elif outs and not ins and location.endswith(ORIGIN_LOCATIONS):
            b = _unit(outs[0].p1 - outs[0].p0)
            a = _unit(v.ins[0].p1 - v.ins[0].p0) if v.ins else b
            sites.append(Site(v.point, "origin", SITE_WEIGHTS["origin"], _unit(b + 0.5 * a), outs[0]))
    return sites


def draw_diameter_mm(rng: np.random.Generator) -> float:
    """An aneurysm's world diameter (mm): skewed small as in the real data."""
    d = DIAMETER_MEDIAN_MM * float(np.exp(DIAMETER_SIGMA * rng.standard_normal()))
    return float(np.clip(d, *DIAMETER_RANGE_MM))


def _perpendicular(v: np.ndarray, d: np.ndarray) -> np.ndarray:
    v = v - (v @ d) * d
    return _unit(v) if np.linalg.norm(v) > 1e-6 else _unit(np.cross(d, [0.3, 0.5, 0.8]))


def draw_bench_aneurysm(location: str, diameter_mm: float, rng: np.random.Generator, tree: list[Segment],
                        scale: float = 1.0) -> Aneurysm:
    """An aneurysm of world diameter ``diameter_mm`` at a site of ``location`` (head frame, pose ``scale``)."""
    segs = [s for s in tree if s.location == location]
    if not segs:
        raise ValueError(f"no vessel segment for location {location!r}")
    radius = diameter_mm / 2.0 / scale
    sites = aneurysm_sites(tree, location)
    if sites and rng.random() >= SIDEWALL_RATE:
        w = np.array([s.weight for s in sites])
        site = sites[int(rng.choice(len(sites), p=w / w.sum()))]
        seg = site.along
        slide = float(rng.uniform(0.5, 2.0) if site.kind == "origin" else rng.uniform(0.0, 1.0)) / scale
        t = min(slide / seg.length, 0.5)
        t = t if np.allclose(site.point, seg.p0) else 1.0 - t  # slide from the vertex into the segment
        d = _unit(seg.p1 - seg.p0)
        axis = site.axis + 0.35 * rng.normal(size=3)
        if location == "Anterior Communicating Artery":  # AComA sacs point forward and up
            axis = np.array([0.0, -1.0, 0.6]) + 0.5 * rng.normal(size=3)
        axis, kind = _unit(axis), site.kind
        if site.kind != "bifurcation":
            axis = _perpendicular(axis, d)  # a bend or origin sac bulges from the wall, not along the lumen
    else:
        w = np.array([s.length for s in segs])
        seg = segs[int(rng.choice(len(segs), p=w / w.sum()))]
        t = float(rng.uniform(0.2, 0.8))
        d = _unit(seg.p1 - seg.p0)
        out = (seg.p0 + t * (seg.p1 - seg.p0)) - COW_CENTER
        axis, kind = _perpendicular(_perpendicular(out, d) + 0.8 * _perpendicular(rng.normal(size=3), d), d), \
            "sidewall"
    attach = seg.p0 + t * (seg.p1 - seg.p0)
    vr = seg.r0 + t * (seg.r1 - seg.r0)
    elongation = float(rng.uniform(1.0, 1.4))
    center = attach + axis * (0.6 * vr + 0.8 * radius * elongation)
    return Aneurysm(location, center, float(radius), elongation, axis, attach, kind)


@dataclass
class Lookalikes:
    """Structures that are not aneurysms, in the head frame: painted, never localized.

    ``arteries`` (loops, infundibula) join the artery labels of their parent; ``veins``, ``dots``, ``bone`` and
    ``air`` are never labelled.
    """

    arteries: list[Segment] = field(default_factory=list)
    veins: list[Segment | Ellipsoid] = field(default_factory=list)
    dots: list[Ellipsoid] = field(default_factory=list)
    bone: list[Ellipsoid] = field(default_factory=list)
    air: list[Ellipsoid] = field(default_factory=list)
    kinds: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (kind, head-frame centre) for the truth


LOOP_PARENTS = ("ICA supraclinoid", "M1", "M2", "A2", "PCA", "SCA", "basilar")
# Veins and sinuses (left side; mirrored), head frame: polylines with a world radius range, or ellipsoids. The
# sinuses run just inside the CSF ellipsoid (72.5 x 87.5 x 67.5 mm semi-axes), under the skull.
_VEIN_LINES: tuple[tuple[tuple[tuple[float, float, float], ...], tuple[float, float]], ...] = (
    (((14, -2, -29), (20, 12, -21), (18, 30, -12), (6, 45, -5)), (0.9, 1.4)),  # basal vein of Rosenthal
    (((18, -12, -25), (32, -9, -19), (50, -5, -9)), (0.8, 1.2)),  # superficial middle cerebral vein (sylvian)
    (((0, 84, -15), (36, 66, -22), (50, 42, -32), (36, 22, -46)), (2.5, 3.5)),  # transverse-sigmoid sinus
)
_MIDLINE_VEINS: tuple[tuple[tuple[tuple[float, float, float], ...], tuple[float, float]], ...] = (
    (((0, -80, 20), (0, -40, 58), (0, 30, 62), (0, 80, 20), (0, 84, -15)), (3.0, 4.0)),  # superior sagittal sinus
    (((3, 8, 4), (0, 45, -2), (0, 75, 12)), (1.5, 2.5)),  # internal cerebral vein, Galen, straight sinus
)
_CAVERNOUS_SINUS = ((16.0, -8.0, -41.0), (5.0, 9.0, 5.5))  # beside the cavernous ICA
_CLIVAL_PLEXUS = ((0.0, 11.0, -50.0), (5.0, 2.0, 12.0))  # in front of the basilar artery
_BONE: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    ((12.0, -14.0, -31.0), (3.5, 5.0, 2.5)),  # anterior clinoid process, against the supraclinoid ICA
    ((26.0, 8.0, -53.0), (10.0, 16.0, 6.0)),  # petrous apex, around the carotid canal
)
_MIDLINE_BONE = (((0.0, 4.0, -48.0), (6.0, 4.0, 15.0)), ((0.0, 2.0, -35.0), (5.0, 2.0, 3.5)))  # clivus, dorsum
_AIR = (((0.0, -20.0, -48.0), (12.0, 9.0, 7.0)),)  # sphenoid sinus, under the sella


def _mirror_pairs(items, sign: float):
    m = np.array([sign, 1.0, 1.0])
    return [(tuple(np.asarray(c) * m), a) for c, a in items]


def draw_lookalikes(tree: list[Segment], rng: np.random.Generator, scale: float = 1.0) -> Lookalikes:
    """Look-alikes for one series (independent of its labels, so positive and negative series both have them)."""
    la = Lookalikes()
    # Tight loops of small arteries: a short stem off a parent vessel, then an almost full turn, then onwards.
    parents = [s for s in tree if s.name in LOOP_PARENTS]
    for _ in range(int(rng.integers(1, 4))):
        seg = parents[int(rng.integers(len(parents)))]
        d = _unit(seg.p1 - seg.p0)
        u = _perpendicular(rng.normal(size=3), d)
        w = _perpendicular(rng.normal(size=3), u)
        base = seg.p0 + float(rng.uniform(0.2, 0.8)) * (seg.p1 - seg.p0)
        stem, rad = float(rng.uniform(2.0, 4.0)) / scale, float(rng.uniform(1.2, 2.2)) / scale
        c = base + u * (stem + rad)
        th = np.linspace(0.0, 1.7 * np.pi, 9)
        pts = [base] + [c - rad * np.cos(t) * u + rad * np.sin(t) * w for t in th]
        pts.append(pts[-1] + _unit(pts[-1] - pts[-2]) * 3.0 / scale)
        r = float(rng.uniform(0.35, 0.6)) / scale
        la.arteries += [Segment(a, b, r, r, seg.location, "loop") for a, b in zip(pts[:-1], pts[1:], strict=True)]
        la.kinds.append(("loop", c))
    # Infundibula: conical dilations (< 3 mm across) where a small branch leaves, mostly the PComA.
    by_name = {}
    for s in tree:
        by_name.setdefault((s.location, s.name), []).append(s)
    for (loc, name), segs in by_name.items():
        if name not in ("PComA", "SCA") or rng.random() >= (0.3 if name == "PComA" else 0.15):
            continue
        first = segs[0]
        parent = next((s for s in tree if s.name != name and np.allclose(s.p1, first.p0)), None)
        pr = parent.r1 if parent is not None else first.r0
        d = _unit(first.p1 - first.p0)
        length = pr + float(rng.uniform(1.5, 2.5)) / scale
        la.arteries.append(Segment(first.p0 + 0.5 * pr * d, first.p0 + length * d,
                                   float(rng.uniform(1.0, 1.4)) / scale, first.r0, loc, "infundibulum"))
        la.kinds.append(("infundibulum", first.p0 + (pr + 0.7 / scale) * d))
    # Veins and sinuses, never labelled (bright on CTA and T1post, dim on TOF, flow voids on T2).
    for sign in (1.0, -1.0):
        for pts, (r_lo, r_hi) in _VEIN_LINES:
            p = np.asarray(pts, dtype=np.float64) * np.array([sign, 1.0, 1.0])
            p[1:-1] += rng.normal(0.0, 1.5, size=p[1:-1].shape)
            r = float(rng.uniform(r_lo, r_hi)) / scale
            la.veins += [Segment(a, b, r, r, "", "vein") for a, b in zip(p[:-1], p[1:], strict=True)]
        c, a = _mirror_pairs([_CAVERNOUS_SINUS], sign)[0]
        la.veins.append(Ellipsoid(c, tuple(x * float(rng.uniform(0.85, 1.15)) for x in a)))
        la.kinds.append(("cavernous sinus", np.asarray(c)))
        la.bone += [Ellipsoid(c, a) for c, a in _mirror_pairs(_BONE, sign)]
    for pts, (r_lo, r_hi) in _MIDLINE_VEINS:
        p = np.asarray(pts, dtype=np.float64)
        r = float(rng.uniform(r_lo, r_hi)) / scale
        la.veins += [Segment(a, b, r, r, "", "vein") for a, b in zip(p[:-1], p[1:], strict=True)]
    la.veins.append(Ellipsoid(*_CLIVAL_PLEXUS))
    la.bone += [Ellipsoid(c, a) for c, a in _MIDLINE_BONE]
    la.air += [Ellipsoid(c, a) for c, a in _AIR]
    # Small dots near the circle of Willis: calcifications, small vessels in cross-section, on T2 small flow voids.
    for _ in range(int(rng.integers(3, 9))):
        c = COW_CENTER + rng.uniform(-1.0, 1.0, size=3) * np.array([30.0, 25.0, 14.0])
        r = float(rng.uniform(0.4, 1.0)) / scale
        la.dots.append(Ellipsoid(tuple(float(v) for v in c), (r, r, r)))
        la.kinds.append(("dot", c))
    return la
