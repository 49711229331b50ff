"""Canary rollouts: the InferenceService patch, its application, and the evidence for a decision."""
