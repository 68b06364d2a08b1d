"""Applications built on sluiceway."""
