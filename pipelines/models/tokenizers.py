"""The CLIP BPE tokenizer, loaded offline from the data shipped in ``pipelines/models/configs/clip_tokenizer``.

Every Stable Diffusion family uses the same 49408-token vocabulary; only the padding token differs. CLIP-L
(SD1.x, SDXL's first encoder) pads with ``<|endoftext|>``; the OpenCLIP encoders (SD2.x, SDXL's second encoder)
pad with ``"!"`` (id 0). The folder is built by ``tools/build_clip_vocab.py``.
"""

from __future__ import annotations

import functools
from pathlib import Path

from transformers import CLIPTokenizer

from pipelines.errors import EaselError

TOKENIZER_DIR = Path(__file__).resolve().parent / "configs" / "clip_tokenizer"
VOCAB_SIZE = 49408
BOS_TOKEN_ID = 49406
EOS_TOKEN_ID = 49407
MODEL_MAX_LENGTH = 77
OPENCLIP_PAD_TOKEN = "!"


@functools.lru_cache(maxsize=4)
def load_clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """Return the shared CLIP tokenizer padding with ``pad_token``, cached per pad token.

    Loads only local files (never the hub). Raises ``EaselError`` if the shipped data is missing or broken.
    The returned object is shared between callers: do not add tokens to it or change its settings.
    """
    if not (TOKENIZER_DIR / "vocab.json").is_file() or not (TOKENIZER_DIR / "merges.txt").is_file():
        raise EaselError(f"The CLIP tokenizer data is missing from {TOKENIZER_DIR}; reinstall Easel.")
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), pad_token=pad_token, local_files_only=True)
    if len(tokenizer) != VOCAB_SIZE:
        raise EaselError(f"The CLIP tokenizer in {TOKENIZER_DIR} has {len(tokenizer)} tokens, expected {VOCAB_SIZE}.")
    if tokenizer.bos_token_id != BOS_TOKEN_ID or tokenizer.eos_token_id != EOS_TOKEN_ID:
        raise EaselError(f"The CLIP tokenizer in {TOKENIZER_DIR} has wrong start/end token ids.")
    if tokenizer.model_max_length != MODEL_MAX_LENGTH:
        tokenizer.model_max_length = MODEL_MAX_LENGTH
    return tokenizer
