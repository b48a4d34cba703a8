"""Synthetic competition data: a head with a circle-of-Willis vessel tree and aneurysms, written in the real layout.

``generate_dataset`` writes a whole competition folder (CSVs, DICOM series, segmentations, test layout, truth);
``make_series`` writes one series and returns its ground truth; ``draw_label_table`` draws only the labels;
``generate_benchmark`` writes the named benchmark split (:data:`BENCHMARK`, preset ``bench``).
"""

from __future__ import annotations

from .benchmark import BENCHMARK, BenchmarkSpec, generate_benchmark
from .dataset import generate_dataset
from .labels import draw_label_table
from .series import SeriesSpec, coordinates_str, localizer_world, make_series

__all__ = ["BENCHMARK", "BenchmarkSpec", "SeriesSpec", "coordinates_str", "draw_label_table", "generate_benchmark",
           "generate_dataset", "localizer_world", "make_series"]
