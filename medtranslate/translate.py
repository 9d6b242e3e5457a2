"""The import path that bundles exported before the package's stage subpackages name.

Their ``configs/inference.json`` imports ``medtranslate.translate`` and calls
``medtranslate.translate.translate_folder``; this module keeps that path working, so every bundle ever exported still
runs (tests/test_export.py runs one). New code imports :mod:`medtranslate.inference.translate`.
"""

from medtranslate.inference.translate import translate_folder, translate_volume

__all__ = ["translate_folder", "translate_volume"]
