"""infer stage: sliding windows, scan-level aggregation, time budget, the submission predictor, out-of-fold tables."""
