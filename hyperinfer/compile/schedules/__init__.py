"""Rule-based schedules applied at build time, per target kind."""
