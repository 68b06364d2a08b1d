"""Seed 001's campaign execution engine (in progress): broadcast, drip, triggered and A/B
campaigns whose enrollments walk step graphs durably.

What exists so far is the engine's pure core, each part in its own module: the step graph and
its validation (``_steps``), send times and wait durations (``_timing``), and conditions and
A/B splits (``_conditions``). The entities that run enrollments on them come next.
"""
