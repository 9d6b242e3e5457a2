"""Training data: pairs and cohorts as slices, the slice cache, the sample phantoms."""
