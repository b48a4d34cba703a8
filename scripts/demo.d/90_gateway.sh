# Run a predictor through the local competition gateway on the synthetic test layout, then score the submission
# (a constant predictor scores 0.5; replace it with the trained model's predictor once one exists).
"$PY" -m rsna_aneurysm.cli gateway --data "$OUT/data" --predictor constant --out "$OUT/submission_constant.parquet"
