"""`zoolens discover` (filled in by its owner)."""
