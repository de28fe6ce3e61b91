"""Evaluation: an in-project classifier that judges generated samples (more metrics follow)."""
