"""Building, loading and flattening models."""
