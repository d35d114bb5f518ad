"""A1111 prompt syntax -> weighted, chunked CLIP text embeddings, plus ``<lora:...>`` tags and prompt schedules.

How the engine uses it, per prompt (positive and negative alike)::

    text, tags = extract_network_tags(prompt)          # tags load LoRAs; the text no longer holds them
    per_step = conditioning_schedule(text, steps)      # [from:to:when] and [a|b]: one text per sampling step
    embeds = {t: encoder.encode(t, clip_skip) for t in dict.fromkeys(per_step)}   # each distinct text once
    cond, uncond = pad_to_same_length(embeds[...], negative_embeds[...])   # repeats the empty-prompt chunk

The parsing half is pure Python; the encoding half needs torch and the text encoders. Rules follow
AUTOMATIC1111's web UI so that prompts written for it give the same conditioning here; the few places where
this module deliberately differs are said where they happen.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch

from pipelines.conditioning.prompt_schedules import schedule_prompt
from pipelines.conditioning.syntax import (
    _ENCODERS_PER_KIND,
    _NETWORK_TAG,
    CHUNK_IDS,
    CHUNK_LENGTH,
    COMMA_PADDING_BACKTRACK,
    KINDS,
    _parse_attention_runs,
    extract_network_tags,
)
from pipelines.errors import EaselError

# ----------------------------------------------------------------------------------------------------------------
# Tokens and chunks


@dataclass(frozen=True)
class PromptChunk:
    """Up to 75 prompt tokens and their weights; ``embeddings`` are ``(position, name)`` of inserted vectors."""

    tokens: tuple[int, ...]
    weights: tuple[float, ...]
    embeddings: tuple[tuple[int, str], ...] = ()

    def input_ids(self, bos_id: int, eos_id: int, pad_id: int) -> list[int]:
        """The 77 ids: start, tokens, end, then padding.

        The end token comes right after the text (not after the padding), as in A1111 and diffusers: CLIP pools
        at the first end token, and OpenCLIP encoders pad with a different id.
        """
        return [bos_id, *self.tokens, eos_id] + [pad_id] * (CHUNK_LENGTH - len(self.tokens))

    def token_weights(self) -> list[float]:
        """The 77 weights matching ``input_ids``: 1.0 for the start, end and padding."""
        return [1.0, *self.weights] + [1.0] * (CHUNK_IDS - 1 - len(self.weights))


class TokenizedPrompt(NamedTuple):
    chunks: list[PromptChunk]
    token_count: int
    """What A1111's counter shows: 75 for every chunk but the last, whose own length is added."""


class _EmbeddingIndex:
    """Finds textual-inversion names in token sequences, as A1111 does (token-wise, longest name first)."""

    def __init__(self, tokenizer: Any, vector_counts: Mapping[str, int]) -> None:
        self._by_first_token: dict[int, list[tuple[tuple[int, ...], str, int]]] = {}
        names = list(vector_counts)
        for name, token_ids in zip(names, _tokenize(tokenizer, names), strict=True):
            ids, count = tuple(token_ids), vector_counts[name]
            if ids:
                self._by_first_token.setdefault(ids[0], []).append((ids, name, count))
        for candidates in self._by_first_token.values():
            candidates.sort(key=lambda candidate: -len(candidate[0]))

    def find(self, tokens: Sequence[int], position: int) -> tuple[str, int, int] | None:
        """``(name, tokens the name spans, vectors it inserts)`` for a name starting at ``position``."""
        for ids, name, count in self._by_first_token.get(tokens[position], ()):
            if tuple(tokens[position : position + len(ids)]) == ids:
                return name, len(ids), count
        return None


def _tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]


def _comma_id(tokenizer: Any) -> int | None:
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    return None if comma is None or comma == tokenizer.unk_token_id else comma


class _ChunkBuilder:
    def __init__(self) -> None:
        self.chunks: list[PromptChunk] = []
        self.token_count = 0
        self._start()

    def _start(self) -> None:
        self.tokens: list[int] = []
        self.weights: list[float] = []
        self.embeddings: list[tuple[int, str]] = []
        self.last_comma = -1

    def close(self, is_last: bool = False) -> None:
        """End the current chunk (padding happens when ids are made)."""
        self.token_count += len(self.tokens) if is_last else CHUNK_LENGTH
        self.chunks.append(PromptChunk(tuple(self.tokens), tuple(self.weights), tuple(self.embeddings)))
        self._start()

    def move_tail_after_comma(self) -> None:
        """Close the chunk at its last comma and start the next one with the words that followed it."""
        cut = self.last_comma + 1
        tokens, weights = self.tokens[cut:], self.weights[cut:]
        embeddings = [(position - cut, name) for position, name in self.embeddings if position >= cut]
        del self.tokens[cut:], self.weights[cut:]
        self.embeddings = [entry for entry in self.embeddings if entry[0] < cut]
        self.close()
        self.tokens, self.weights, self.embeddings = tokens, weights, embeddings


def tokenize_prompt(text: str, tokenizer: Any, embedding_index: _EmbeddingIndex | None = None) -> TokenizedPrompt:
    """Parse emphasis and split the tokens into 75-token chunks, as A1111 does.

    Each weighted run is tokenized on its own, without start/end tokens. ``BREAK`` closes the current chunk. When
    a chunk fills up less than ``COMMA_PADDING_BACKTRACK`` tokens after a comma, the words after that comma move
    to the next chunk so that a phrase is not cut in two. An empty prompt gives one empty chunk.
    """
    runs = _parse_attention_runs(text)
    token_lists = iter(_tokenize(tokenizer, [run.text for run in runs if not run.is_break]))
    comma = _comma_id(tokenizer)
    builder = _ChunkBuilder()
    for run in runs:
        if run.is_break:
            builder.close()
            continue
        tokens = next(token_lists)
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma:
                builder.last_comma = len(builder.tokens)
            elif (
                len(builder.tokens) == CHUNK_LENGTH
                and builder.last_comma != -1
                and len(builder.tokens) - builder.last_comma <= COMMA_PADDING_BACKTRACK
            ):
                builder.move_tail_after_comma()
            if len(builder.tokens) == CHUNK_LENGTH:
                builder.close()

            found = embedding_index.find(tokens, position) if embedding_index is not None else None
            if found is None:
                builder.tokens.append(token)
                builder.weights.append(run.weight)
                position += 1
                continue
            name, name_length, vector_count = found
            if len(builder.tokens) + vector_count > CHUNK_LENGTH:
                builder.close()
            builder.embeddings.append((len(builder.tokens), name))
            builder.tokens.extend([0] * vector_count)  # placeholders; the vectors replace their embeddings
            builder.weights.extend([run.weight] * vector_count)
            position += name_length
    if builder.tokens or not builder.chunks:
        builder.close(is_last=True)
    return TokenizedPrompt(builder.chunks, builder.token_count)


def count_prompt_tokens(
    text: str, tokenizer: Any, steps: int = 20, embedding_index: _EmbeddingIndex | None = None
) -> tuple[int, int]:
    """``(tokens used, capacity)`` for the UI's counter, as A1111 shows it.

    Network tags are ignored (even malformed ones: the counter must not fail while the user types); with
    prompt editing the longest of the scheduled texts counts. Capacity is 75 per chunk.
    """
    text = _NETWORK_TAG.sub("", text)
    texts = dict.fromkeys(entry for _, entry in schedule_prompt(text, max(steps, 1)))
    used = max(tokenize_prompt(entry, tokenizer, embedding_index).token_count for entry in texts)
    return used, math.ceil(max(used, 1) / CHUNK_LENGTH) * CHUNK_LENGTH


# ----------------------------------------------------------------------------------------------------------------
# Encoding


@dataclass(frozen=True, eq=False)
class PromptEmbeds:
    """``embeds``: ``[batch, 77 * chunks, dim]``; ``pooled``: ``[batch, projection_dim]`` for SDXL, else None.

    ``empty_chunk`` encodes the empty prompt with the same encoder and clip skip (``[1, 77, dim]``), on demand:
    ``pad_to_same_length`` needs it, and it stays correct if the text encoder's weights change (LoRA).
    """

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    clip_skip: int = 1
    empty_chunk: Callable[[], torch.Tensor] | None = field(default=None, repr=False)

    @property
    def num_chunks(self) -> int:
        return self.embeds.shape[1] // CHUNK_IDS


def pad_to_same_length(*embeds: PromptEmbeds) -> tuple[PromptEmbeds, ...]:
    """Lengthen the shorter embeddings (e.g. cond and uncond) to the longest by repeating the empty-prompt chunk.

    This is what A1111 does when cond and uncond have different numbers of chunks; embeddings already at the
    longest length are returned as they are. Only embeddings from ``PromptEncoder.encode`` can be padded.
    """
    target = max(item.embeds.shape[1] for item in embeds)
    padded = []
    for item in embeds:
        missing = (target - item.embeds.shape[1]) // CHUNK_IDS
        if missing == 0:
            padded.append(item)
            continue
        if item.empty_chunk is None:
            raise ValueError("only embeddings made by PromptEncoder.encode can be padded")
        empty = item.empty_chunk().to(device=item.embeds.device, dtype=item.embeds.dtype)
        filler = empty.repeat(item.embeds.shape[0], missing, 1)
        padded.append(replace(item, embeds=torch.cat([item.embeds, filler], dim=1)))
    return tuple(padded)


def _text_transformer(text_encoder: Any) -> Any:
    """The CLIP transformer itself: ``CLIPTextModelWithProjection`` wraps one in ``.text_model``."""
    return getattr(text_encoder, "text_model", text_encoder)


def _hidden_size(text_encoder: Any) -> int:
    return int(text_encoder.config.hidden_size)


def _emphasize(hidden: torch.Tensor, chunks: Sequence[PromptChunk]) -> torch.Tensor:
    """Scale each token by its weight, then restore each chunk's mean (A1111's "Original" emphasis).

    Chunks whose weights are all 1.0 are returned untouched, bit for bit.
    """
    result = []
    for chunk_hidden, chunk in zip(hidden, chunks, strict=True):
        if all(weight == 1.0 for weight in chunk.weights):
            result.append(chunk_hidden)
            continue
        original = chunk_hidden.float()
        weights = torch.tensor(chunk.token_weights(), dtype=torch.float32, device=original.device)
        weighted = original * weights[:, None]
        weighted = weighted * (original.mean() / weighted.mean())
        result.append(weighted.to(chunk_hidden.dtype))
    return torch.stack(result)


class PromptEncoder:
    """Turns prompt text into embeddings with a checkpoint's tokenizer(s) and text encoder(s).

    ``encoders`` are ``(tokenizer, text_encoder)`` pairs: one for ``sd1``, ``sd2`` and ``sdxl_refiner`` (its
    ``CLIPTextModelWithProjection``), two for ``sdxl`` (CLIP-L, then OpenCLIP-bigG with projection). Token ids
    are chunked once with the first tokenizer (all share CLIP's vocabulary); each encoder pads with its own
    tokenizer's pad id. The models are never modified, except that a forward hook sits on the token embedding
    for the duration of an ``encode`` that uses a textual inversion (the engine encodes under its device lock).

    ``embeddings`` maps a textual-inversion name (A1111: the file stem) to its vectors: a ``[n, dim]`` tensor,
    or for SDXL one tensor per encoder in encoder order. Ones whose sizes do not fit these encoders are left
    out and listed in ``skipped_embeddings``; their names are then just words.
    """

    def __init__(
        self,
        encoders: Sequence[tuple[Any, Any]],
        kind: str,
        embeddings: Mapping[str, torch.Tensor | Sequence[torch.Tensor]] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if len(encoders) != _ENCODERS_PER_KIND[kind]:
            raise ValueError(f"{kind} needs {_ENCODERS_PER_KIND[kind]} (tokenizer, text encoder) pairs")
        self.kind = kind
        self._tokenizers = [tokenizer for tokenizer, _ in encoders]
        self._text_encoders = [text_encoder for _, text_encoder in encoders]
        self._device = torch.device(device) if device is not None else None
        self.skipped_embeddings: dict[str, str] = {}
        self._embeddings: dict[str, tuple[torch.Tensor, ...]] = {}
        for name, vectors in (embeddings or {}).items():
            checked = self._check_embedding(name, vectors)
            if checked is not None:
                self._embeddings[name] = checked
        self._embedding_index = (
            _EmbeddingIndex(self._tokenizers[0], {name: len(v[0]) for name, v in self._embeddings.items()})
            if self._embeddings
            else None
        )

    @property
    def embed_dim(self) -> int:
        """Feature size of the embeddings: the encoders' hidden sizes added up."""
        return sum(_hidden_size(text_encoder) for text_encoder in self._text_encoders)

    @property
    def embedding_names(self) -> list[str]:
        return list(self._embeddings)

    def _check_embedding(
        self, name: str, vectors: torch.Tensor | Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, ...] | None:
        per_encoder = (vectors,) if isinstance(vectors, torch.Tensor) else tuple(vectors)
        sizes = [_hidden_size(text_encoder) for text_encoder in self._text_encoders]
        if len(per_encoder) != len(sizes):
            self.skipped_embeddings[name] = f"has {len(per_encoder)} vector sets, this model needs {len(sizes)}"
            return None
        shaped = tuple(v.detach().reshape(1, -1) if v.dim() == 1 else v.detach() for v in per_encoder)
        if any(v.dim() != 2 or v.shape[1] != size for v, size in zip(shaped, sizes, strict=True)):
            found = [tuple(v.shape) for v in shaped]
            self.skipped_embeddings[name] = f"has vectors {found}, this model needs widths {sizes}"
            return None
        counts = {v.shape[0] for v in shaped}
        if len(counts) != 1 or not 0 < counts.pop() <= CHUNK_LENGTH:
            self.skipped_embeddings[name] = f"needs 1 to {CHUNK_LENGTH} vectors, equal for each encoder"
            return None
        return shaped

    def tokenize(self, text: str) -> TokenizedPrompt:
        """Chunks of ``text`` (network tags removed) with the first tokenizer and the known embeddings."""
        text, _ = extract_network_tags(text)
        return tokenize_prompt(text, self._tokenizers[0], self._embedding_index)

    def count_tokens(self, text: str, steps: int = 20) -> tuple[int, int]:
        """``(tokens used, capacity)`` for the UI's token counter; see ``count_prompt_tokens``."""
        return count_prompt_tokens(text, self._tokenizers[0], steps, self._embedding_index)

    def encode(self, text: str, clip_skip: int = 1) -> PromptEmbeds:
        """Embeddings for one prompt text (emphasis and BREAK applied; schedules must be resolved before).

        ``clip_skip`` 1 uses the last layer; N uses hidden state -N then the final layer norm (SD1/SD2), or
        hidden state -(N+1) without it for SDXL, whose default is already the penultimate layer.
        """
        return self._encode_chunks(self.tokenize(text).chunks, clip_skip)

    def encode_empty_chunk(self, clip_skip: int = 1) -> torch.Tensor:
        """``[1, 77, dim]``: the empty prompt, which A1111 repeats to lengthen the shorter of cond and uncond."""
        return self._encode_chunks([PromptChunk((), ())], clip_skip).embeds

    def pad_to_same_length(self, *embeds: PromptEmbeds) -> tuple[PromptEmbeds, ...]:
        """The module's ``pad_to_same_length``, kept here for callers that hold an encoder."""
        return pad_to_same_length(*embeds)

    def _input_device(self, text_encoder: Any) -> torch.device:
        if self._device is not None:
            return self._device
        parameter = next(text_encoder.parameters(), None)
        if parameter is None or parameter.device.type == "meta":
            return torch.device("cpu")  # offloaded: accelerate's hooks move the inputs
        return parameter.device

    def _select_hidden(self, text_encoder: Any, output: Any, clip_skip: int) -> torch.Tensor:
        if self.kind in ("sd1", "sd2") and clip_skip == 1:
            return output.last_hidden_state
        index = clip_skip + 1 if self.kind in ("sdxl", "sdxl_refiner") else clip_skip
        hidden_states = output.hidden_states
        if index > len(hidden_states):
            layers = len(hidden_states) - 1
            raise EaselError(f"Clip skip {clip_skip} is too large for this model's text encoder ({layers} layers).")
        hidden = hidden_states[-index]
        if self.kind in ("sd1", "sd2"):
            hidden = _text_transformer(text_encoder).final_layer_norm(hidden)
        return hidden

    @contextmanager
    def _inserted_vectors(self, text_encoder: Any, encoder_index: int, chunks: Sequence[PromptChunk]) -> Iterator[None]:
        """Put textual-inversion vectors in place of their placeholder tokens for one forward pass."""
        places = [
            (chunk_index, 1 + position, self._embeddings[name][encoder_index])
            for chunk_index, chunk in enumerate(chunks)
            for position, name in chunk.embeddings
        ]
        if not places:
            yield
            return

        def insert(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
            output = output.clone()
            for chunk_index, start, vectors in places:
                output[chunk_index, start : start + len(vectors)] = vectors.to(output.device, output.dtype)
            return output

        handle = _text_transformer(text_encoder).embeddings.token_embedding.register_forward_hook(insert)
        try:
            yield
        finally:
            handle.remove()

    def _encode_chunks(self, chunks: Sequence[PromptChunk], clip_skip: int) -> PromptEmbeds:
        if clip_skip < 1:
            raise EaselError(f"Clip skip must be 1 or more, got {clip_skip}.")
        needs_hidden_states = clip_skip > 1 or self.kind in ("sdxl", "sdxl_refiner")
        parts: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for encoder_index, (tokenizer, text_encoder) in enumerate(
            zip(self._tokenizers, self._text_encoders, strict=True)
        ):
            ids = [
                chunk.input_ids(tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
                for chunk in chunks
            ]
            input_ids = torch.tensor(ids, dtype=torch.long, device=self._input_device(text_encoder))
            with torch.no_grad(), self._inserted_vectors(text_encoder, encoder_index, chunks):
                output = text_encoder(input_ids=input_ids, output_hidden_states=needs_hidden_states)
                hidden = self._select_hidden(text_encoder, output, clip_skip)
            parts.append(_emphasize(hidden, chunks))
            if self.kind in ("sdxl", "sdxl_refiner") and encoder_index == len(self._text_encoders) - 1:
                pooled = output.text_embeds[:1]
        embeds = torch.cat([part.to(parts[0].device) for part in parts], dim=-1)
        empty_chunk = functools.partial(self.encode_empty_chunk, clip_skip)
        return PromptEmbeds(embeds.reshape(1, -1, embeds.shape[-1]), pooled, clip_skip, empty_chunk)
