"""The labelling jobs: extract-phrases and pseudo-label, their data path, filters and statistics."""
