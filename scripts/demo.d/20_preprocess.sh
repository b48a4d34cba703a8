# Preprocess the synthetic training series: canonical orientation, 1 mm isotropic, head masks, NIfTI, manifest.
"$PY" -m rsna_aneurysm.cli preprocess --data "$OUT/data" --out "$OUT/pre" --workers 2
"$PY" - <<'PY'
import os, polars as pl
out = os.environ["OUT"]
m = pl.read_parquet(f"{out}/pre/manifest.parquet")
l = pl.read_parquet(f"{out}/pre/localizers.parquet")
print(m.select("SeriesInstanceUID", "Modality", "source_orientation", "source_spacing_ijk", "shape_kji", "status")
      .with_columns(pl.col("SeriesInstanceUID").str.slice(-12)).head(8))
print(f"localizers mapped: {(l['status'] == 'ok').sum()}/{len(l)}; series flagged with guessed spacing: "
      f"{m['spacing_guessed'].sum()}; preprocess seconds per series (median): {m['seconds'].median():.2f}")
PY
