"""`zoolens compare` (filled in by its owner)."""
