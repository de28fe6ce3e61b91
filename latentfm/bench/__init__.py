"""Benchmarks of samplers on a known flow or a trained checkpoint, and the plots they draw."""
