"""Demonstration programs built on sluiceway."""
