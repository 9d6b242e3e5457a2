"""The shipped pipeline files, installed with the package as ``medtranslate.pipelines`` (pyproject.toml maps this
folder there), so ``medtranslate run mr2ct_pix2pix`` finds them in a wheel as in a clone."""
