"""Tests of the sluiceway command line."""
