"""`zoolens rosetta` (filled in by its owner)."""
