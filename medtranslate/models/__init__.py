"""Networks, losses, the model kinds (pix2pix, CycleGAN, baselines), calibration, checkpoints."""
