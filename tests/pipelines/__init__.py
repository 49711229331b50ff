"""Tests of the kfp training pipeline."""
