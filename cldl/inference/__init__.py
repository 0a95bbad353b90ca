"""Inference: the predictor, folder mode, region maps, confidence and numeric precision."""
