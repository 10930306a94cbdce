"""Evaluation: per-stage tables, whole-game runs, videos and plots."""
