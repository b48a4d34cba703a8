"""The ``bench`` preset's intensities per modality: contrast, noise and bias closer to real angiography.

CTA: contrasted arteries moderately bright (bolus timing varies), dense skull base right beside the carotid siphon,
some venous filling (cavernous sinus, veins), calcified dots. MRA (time of flight): bright inflow on a suppressed
background, slow flow in the sac dimmer, veins mostly saturated, a strong bias field. MRI T2: bright CSF, arteries
and sinuses as dark flow voids. MRI T1post: enhancing arteries only a little brighter than white matter, veins and
sinuses as bright as the arteries. The noise level is drawn per series in each modality's own range.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bench_anatomy import Lookalikes
from .render import Style


@dataclass(frozen=True)
class LookalikeValues:
    """Intensities of a series' look-alikes, in the units of its :class:`~.render.Style`."""

    skull_base: float
    air: float
    vein: float
    dot: float


def draw_bench_style(modality: str, rng: np.random.Generator) -> tuple[Style, LookalikeValues]:
    """Tissue and look-alike intensities for one ``bench`` series of ``modality``."""
    if modality == "CTA":
        vessel = float(rng.uniform(250.0, 450.0))
        bone = float(rng.uniform(1000.0, 1600.0))
        style = Style(air=-1000.0, neck=40.0, scalp=30.0, bone=bone, csf=8.0, grey=38.0, white=28.0, vessel=vessel,
                      aneurysm=vessel * float(rng.uniform(0.8, 1.0)), noise=float(rng.uniform(8.0, 25.0)),
                      rician=False, bias=0.0)
        return style, LookalikeValues(skull_base=bone * float(rng.uniform(0.8, 1.0)), air=-1000.0,
                                      vein=vessel * float(rng.uniform(0.5, 0.95)), dot=float(rng.uniform(200.0, 900.0)))
    g = float(rng.uniform(0.7, 1.5))  # MR units are arbitrary: a per-series gain
    if modality == "MRA":
        vessel = float(rng.uniform(450.0, 800.0))
        v = dict(neck=110.0, scalp=180.0, bone=15.0, csf=30.0, grey=100.0, white=125.0, vessel=vessel,
                 aneurysm=vessel * float(rng.uniform(0.5, 0.9)))
        noise, bias = rng.uniform(10.0, 30.0), rng.uniform(0.25, 0.45)
        extra = dict(skull_base=15.0, air=0.0, vein=100.0 * float(rng.uniform(1.0, 1.8)),
                     dot=vessel * float(rng.uniform(0.5, 0.9)))
    elif modality == "MRI T2":
        vessel = float(rng.uniform(30.0, 80.0))
        v = dict(neck=180.0, scalp=250.0, bone=20.0, csf=float(rng.uniform(850.0, 1050.0)), grey=480.0, white=380.0,
                 vessel=vessel, aneurysm=float(rng.uniform(60.0, 250.0)))
        noise, bias = rng.uniform(12.0, 35.0), rng.uniform(0.1, 0.25)
        extra = dict(skull_base=20.0, air=0.0, vein=float(rng.uniform(40.0, 150.0)),
                     dot=vessel * float(rng.uniform(1.0, 2.5)))
    elif modality == "MRI T1post":
        vessel = 420.0 * float(rng.uniform(1.25, 1.6))
        v = dict(neck=350.0, scalp=550.0, bone=30.0, csf=80.0, grey=330.0, white=420.0, vessel=vessel,
                 aneurysm=vessel * float(rng.uniform(0.8, 1.0)))
        noise, bias = rng.uniform(12.0, 30.0), rng.uniform(0.1, 0.25)
        extra = dict(skull_base=30.0, air=0.0, vein=vessel * float(rng.uniform(0.9, 1.2)),
                     dot=vessel * float(rng.uniform(0.7, 1.0)))
    else:
        raise ValueError(f"unknown modality {modality!r}")
    style = Style(air=0.0, **{k: float(x * g) for k, x in v.items()}, noise=float(noise * g), rician=True,
                  bias=float(bias))
    return style, LookalikeValues(**{k: float(x * g) for k, x in extra.items()})


def lookalike_layers(la: Lookalikes, values: LookalikeValues) -> tuple[list, list]:
    """(``Scene.under``, ``Scene.over``): skull base, air and veins under the arteries; dots over everything."""
    under = [(s, values.skull_base) for s in la.bone] + [(s, values.air) for s in la.air]
    under += [(s, values.vein) for s in la.veins]
    return under, [(s, values.dot) for s in la.dots]
