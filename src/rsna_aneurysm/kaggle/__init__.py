"""kaggle stage: package the weights, code and wheels datasets plus the kernel folder, and push them."""
