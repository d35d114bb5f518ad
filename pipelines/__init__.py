"""Easel's generation engine: checkpoints, the shared pipeline manager and generation. Never imports gradio."""
