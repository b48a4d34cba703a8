"""kaggle stage."""
