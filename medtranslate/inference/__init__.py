"""Translating scans with a trained model, and exporting it as a MONAI bundle."""
