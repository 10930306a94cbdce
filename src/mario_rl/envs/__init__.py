"""Environments: stages, episode rules, reward shaping, preprocessing, vector and single envs (no torch)."""
