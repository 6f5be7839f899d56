"""`zoolens probe` (filled in by its owner)."""
