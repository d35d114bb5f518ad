"""Build the CLIP BPE tokenizer files that Easel ships inside the ``pipelines`` package.

The source is open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (MIT licensed), given either directly or as the
open_clip wheel that contains it (``open_clip/bpe_simple_vocab_16e6.txt.gz``). From it this script derives the
49408-token CLIP vocabulary used by every Stable Diffusion text encoder:

* the 256 byte-level symbols (GPT-2/CLIP byte-to-unicode table, in table order),
* the same 256 symbols with the end-of-word marker ``</w>`` appended,
* one token per merge, for the first 48894 merges of the file (its first line is a header),
* ``<|startoftext|>`` (id 49406) and ``<|endoftext|>`` (id 49407).

It writes ``vocab.json``, ``merges.txt``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into the
output folder, in the layout ``transformers.CLIPTokenizer.from_pretrained`` reads offline.

Usage::

    python tools/build_clip_vocab.py /path/to/open_clip_torch-3.3.0-py3-none-any.whl
    python tools/build_clip_vocab.py bpe_simple_vocab_16e6.txt.gz --out some/folder
"""

from __future__ import annotations

import argparse
import gzip
import json
import zipfile
from pathlib import Path

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
VOCAB_SIZE = 49408
BYTE_SYMBOLS = 256
MERGE_COUNT = VOCAB_SIZE - 2 * BYTE_SYMBOLS - 2  # 48894 = 49152 - 256 - 2
MODEL_MAX_LENGTH = 77
GZ_NAME_IN_WHEEL = "open_clip/bpe_simple_vocab_16e6.txt.gz"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "pipelines" / "models" / "configs" / "clip_tokenizer"


def byte_symbols() -> list[str]:
    """Return the 256 printable stand-ins for raw bytes, in the order the CLIP vocabulary lists them.

    Bytes that are already visible, non-space Latin-1 characters stand for themselves and come first, in byte
    order; every other byte (controls, space, DEL, NBSP, soft hyphen, ...) gets the next unused code point from
    U+0100 upwards and follows, again in byte order.
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    visible_set = set(visible)
    chars = [chr(b) for b in visible]
    next_free = 0
    for b in range(256):
        if b not in visible_set:
            chars.append(chr(256 + next_free))
            next_free += 1
    assert len(chars) == BYTE_SYMBOLS and len(set(chars)) == BYTE_SYMBOLS
    return chars


def read_merges_text(source: Path) -> str:
    """Return the decompressed merges text from a ``.gz`` file or from an open_clip wheel (a zip)."""
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as wheel:
            data = wheel.read(GZ_NAME_IN_WHEEL)
        return gzip.decompress(data).decode("utf-8")
    with gzip.open(source, "rb") as handle:
        return handle.read().decode("utf-8")


def parse_merges(text: str) -> list[tuple[str, str]]:
    """Skip the header line and return the first ``MERGE_COUNT`` merges as pairs."""
    lines = text.split("\n")[1 : 1 + MERGE_COUNT]
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(lines, start=2):
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"merges line {number} is not a pair: {line!r}")
        pairs.append((parts[0], parts[1]))
    if len(pairs) != MERGE_COUNT:
        raise ValueError(f"expected {MERGE_COUNT} merges, found {len(pairs)}")
    return pairs


def build_vocab(pairs: list[tuple[str, str]]) -> dict[str, int]:
    """Return token -> id for the full 49408-token CLIP vocabulary."""
    symbols = byte_symbols()
    tokens = [*symbols, *(s + END_OF_WORD for s in symbols), *(a + b for a, b in pairs), BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"vocabulary has {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")
    return vocab


def write_tokenizer_folder(out: Path, vocab: dict[str, int], pairs: list[tuple[str, str]]) -> None:
    """Write the four tokenizer files into ``out`` (created if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    merges_lines = ["#version: 0.2", *(f"{a} {b}" for a, b in pairs)]
    (out / "merges.txt").write_text("\n".join(merges_lines) + "\n", encoding="utf-8")
    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        **special,
    }
    for name, payload in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        (out / name).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build the vocabulary and write the tokenizer folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="open_clip wheel (.whl) or bpe_simple_vocab_16e6.txt.gz")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    args = parser.parse_args(argv)

    pairs = parse_merges(read_merges_text(args.source))
    vocab = build_vocab(pairs)
    write_tokenizer_folder(args.out, vocab, pairs)
    print(f"wrote {len(vocab)} tokens and {len(pairs)} merges to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
