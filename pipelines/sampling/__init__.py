"""Samplers and schedules, variation noise, and the hires fix's second pass."""
