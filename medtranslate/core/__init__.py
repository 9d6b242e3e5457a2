"""What every layer uses: errors, value checks, atomic writes, the task registry, the configuration."""
