"""Tests of the applications built on sluiceway."""
