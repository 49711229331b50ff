"""Watching the served model: the inference log joined with labels, drift, and retraining."""
