"""Two-stage pipeline: region targets, the region finder (stage one), region crops and two-stage inference."""
