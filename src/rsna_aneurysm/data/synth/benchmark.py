"""The named benchmark split: a fixed ``bench``-preset dataset that detection recipes are compared on.

``generate_benchmark(out)`` (``rsna-aneurysm synth --benchmark --out DIR``) always writes the same files: the seed,
the train and test counts and the preset are fixed here, and the test split is scorable with at least
``test_cover_min`` positive series in every location column. Change :data:`BENCHMARK` only together with its
``name``, so scores on different versions are never compared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .dataset import generate_dataset


@dataclass(frozen=True)
class BenchmarkSpec:
    """A named, fixed synthetic split."""

    name: str
    seed: int
    n_train: int
    n_test: int
    preset: str = "bench"
    test_cover_min: int = 3  # positive test series per location column (the test split always covers labels)


# 120 train + 100 test series: 100 test series hold 43 positives, at least 3 per location column.
BENCHMARK = BenchmarkSpec(name="bench-v1", seed=2025, n_train=120, n_test=100)


def generate_benchmark(out: Path, spec: BenchmarkSpec = BENCHMARK, workers: int = 1, overwrite: bool = False,
                       progress: bool = False) -> dict:
    """Write the benchmark split ``spec`` into ``out``; the summary names it (``benchmark``)."""
    summary = generate_dataset(out, spec.n_train, preset=spec.preset, seed=spec.seed, n_test=spec.n_test,
                               workers=workers, overwrite=overwrite, progress=progress, test_cover_labels=True,
                               test_cover_min=spec.test_cover_min)
    return {"benchmark": asdict(spec), **summary}
