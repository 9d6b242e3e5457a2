"""medtranslate: slice-wise 2D GAN translation of 3D medical volumes (MR -> CT, low-dose -> normal-dose CT)."""

__version__ = "0.1.0"
