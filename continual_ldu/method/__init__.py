"""The algorithm: trajectory maps, objectives and the protection map (no side effects)."""
