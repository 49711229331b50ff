"""Tests for mlref.training."""
