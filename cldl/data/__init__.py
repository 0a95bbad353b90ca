"""Data: synthetic phantoms and dataset handling."""
