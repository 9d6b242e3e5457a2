"""Volumes on a grid: geometry, orientation, resampling, body masks."""
