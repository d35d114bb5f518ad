"""What a prompt or the UI adds to a model: LoRA, VAEs, textual-inversion embeddings."""
