"""Prompts -> conditioning: A1111 syntax, prompt schedules, the text encoder wrapper, styles."""
