"""Stage two of the vessel-guided pipeline: the ROI classifier on the region the vessel segmenter found."""
