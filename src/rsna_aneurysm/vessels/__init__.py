"""Vessel segmentation: the stage one of the vessel-guided ROI pipeline (segmenter, its training, the region it
gives, and trained nnU-Net v2 model folders as an alternative segmenter)."""
