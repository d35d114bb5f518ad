"""Easel's face: the Gradio Blocks app and the A1111-compatible REST API. No generation logic."""
