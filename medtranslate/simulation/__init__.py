"""Low-dose CT simulation in the projection domain."""
