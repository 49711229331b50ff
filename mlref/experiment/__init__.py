"""User-level A/B experiments: sticky assignment, significance, plan and report."""
