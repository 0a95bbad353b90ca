"""Files: image and label-map reading and writing, file integrity checks and atomic writes."""
