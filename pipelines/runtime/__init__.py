"""Jobs, the shared queue, and live previews."""
