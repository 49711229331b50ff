"""The Feast feature repository: entities ``user`` and ``ad`` and their daily stats views."""
