"""Small helpers every part of the package may use: atomic file writes and JSON files."""
