"""Tests for mlref.data."""
