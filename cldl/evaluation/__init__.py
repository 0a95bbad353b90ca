"""Evaluation: segmentation and calibration metrics, and the reports of ``cldl evaluate``."""
