"""Registration, bias-field correction, resampling, masking and cropping of cohorts."""
