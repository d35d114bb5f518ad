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
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch

from pipelines.errors import EaselError

CHUNK_LENGTH = 75
"""Prompt tokens in one chunk; with the start and end tokens a chunk fills CLIP's 77 positions."""
CHUNK_IDS = CHUNK_LENGTH + 2
COMMA_PADDING_BACKTRACK = 20
"""A chunk that fills up within this many tokens of a comma moves the words after the comma to the next chunk."""
ROUND_BRACKET_WEIGHT = 1.1
SQUARE_BRACKET_WEIGHT = 1 / 1.1
BREAK = ("BREAK", -1.0)
"""What ``parse_prompt_attention`` yields for the ``BREAK`` keyword."""
KINDS = ("sd1", "sd2", "sdxl", "sdxl_refiner")
_ENCODERS_PER_KIND = {"sd1": 1, "sd2": 1, "sdxl": 2, "sdxl_refiner": 1}


# ----------------------------------------------------------------------------------------------------------------
# Emphasis: (x), [x], (x:1.3), BREAK


class _Run(NamedTuple):
    text: str
    weight: float
    is_break: bool = False


_ATTENTION_TOKEN = re.compile(
    r"""
      \\[()\[\]\\]                # an escaped bracket or backslash: literal
    | \\                          # a lone backslash: dropped
    | \(
    | \[
    | :\s*([+-]?[.\d]+)\s*\)      # ":1.3)" closes a round bracket with an explicit weight
    | \)
    | \]
    | [^\\()\[\]:]+               # plain text
    | :
    """,
    re.VERBOSE,
)
_BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")


def _parse_attention_runs(text: str) -> list[_Run]:
    """Split ``text`` into runs of equal weight; BREAK markers are flagged so no text can pass for one."""
    runs: list[list[Any]] = []  # [text, weight, is_break], mutable while brackets close
    open_round: list[int] = []
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            if not run[2]:
                run[1] *= factor

    def add_text(piece: str) -> None:
        for index, part in enumerate(_BREAK_WORD.split(piece)):
            if index > 0:
                runs.append([BREAK[0], BREAK[1], True])
            runs.append([part, 1.0, False])

    for match in _ATTENTION_TOKEN.finditer(text):
        piece, explicit_weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            runs.append([piece[1:], 1.0, False])
        elif piece == "(":
            open_round.append(len(runs))
        elif piece == "[":
            open_square.append(len(runs))
        elif explicit_weight is not None and open_round:
            try:
                factor = float(explicit_weight)
            except ValueError:  # "(x:1.2.3)": A1111 crashes; keep it as text and leave the bracket open
                add_text(piece)
                continue
            scale_from(open_round.pop(), factor)
        elif piece == ")" and open_round:
            scale_from(open_round.pop(), ROUND_BRACKET_WEIGHT)
        elif piece == "]" and open_square:
            scale_from(open_square.pop(), SQUARE_BRACKET_WEIGHT)
        else:  # plain text, a stray ")" or "]", a ":" outside a weight
            add_text(piece)

    # Unclosed brackets reach to the end of the prompt.
    for start in open_round:
        scale_from(start, ROUND_BRACKET_WEIGHT)
    for start in open_square:
        scale_from(start, SQUARE_BRACKET_WEIGHT)

    merged: list[_Run] = []
    for text_part, weight, is_break in runs:
        if not is_break and not text_part:
            continue
        if merged and not is_break and not merged[-1].is_break and merged[-1].weight == weight:
            merged[-1] = _Run(merged[-1].text + text_part, weight)
        else:
            merged.append(_Run(text_part, weight, is_break))
    return merged or [_Run("", 1.0)]


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into ``(text, weight)`` runs with A1111's emphasis rules.

    ``(x)`` multiplies by 1.1, ``[x]`` divides by 1.1, ``(x:1.3)`` multiplies by 1.3, nesting multiplies;
    ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are literal; an unclosed bracket reaches to the end, a stray closing
    one is kept as text. Adjacent runs of equal weight merge. The word ``BREAK`` yields ``("BREAK", -1.0)``;
    unlike A1111, a BREAK inside brackets still breaks (A1111 scales its marker and then encodes the word).
    """
    return [BREAK if run.is_break else (run.text, run.weight) for run in _parse_attention_runs(text)]


# ----------------------------------------------------------------------------------------------------------------
# Extra-network tags: <lora:name:weight>


@dataclass(frozen=True)
class NetworkTag:
    """An extra-network tag taken out of a prompt, e.g. ``<lora:name:0.8>``.

    ``weight`` is the text-encoder weight (A1111's first number); ``unet_weight`` is set only when the tag
    gives a second number or ``unet=``, and otherwise means "the same as weight".
    """

    kind: str
    name: str
    weight: float = 1.0
    unet_weight: float | None = None


_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")


def _tag_number(value: str, tag: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise EaselError(f"The weight {value.strip()!r} in {tag} is not a number.")
    return number


def _network_tag(match: re.Match[str]) -> NetworkTag:
    tag = match.group(0)
    name, *arguments = (part.strip() for part in match.group(2).split(":"))
    if not name:
        raise EaselError(f"The tag {tag} has no name.")
    positional: list[float] = []
    named: dict[str, float] = {}
    for argument in arguments:
        key, equals, value = argument.partition("=")
        if equals:
            named[key.strip().lower()] = _tag_number(value, tag)
        else:
            positional.append(_tag_number(argument, tag))
    weight = named.get("te", positional[0] if positional else 1.0)
    unet_weight = named.get("unet", positional[1] if len(positional) > 1 else None)
    return NetworkTag(kind=match.group(1).lower(), name=name, weight=weight, unet_weight=unet_weight)


def extract_network_tags(text: str) -> tuple[str, list[NetworkTag]]:
    """Remove every ``<kind:name[:te_weight[:unet_weight]]>`` tag from ``text`` and return them in order.

    As in A1111 any ``<word:...>`` is an extra-network tag (``lora``, ``lyco``, ``hypernet``...); the caller
    decides which kinds it supports. The rest of the text is left exactly as it was. A weight that is not a
    number raises ``EaselError`` naming the tag.
    """
    if "<" not in text:
        return text, []
    tags = [_network_tag(match) for match in _NETWORK_TAG.finditer(text)]
    return _NETWORK_TAG.sub("", text), tags


# ----------------------------------------------------------------------------------------------------------------
# Prompt editing [from:to:when] and alternation [a|b]


@dataclass
class _Scheduled:
    before: list[_Node]
    after: list[_Node]
    when: float


@dataclass
class _Alternate:
    options: list[list[_Node]]


_Node = str | _Scheduled | _Alternate


class _NoParse(Exception):
    """A bracket group that is not valid schedule syntax."""


MAX_BRACKET_DEPTH = 64
"""Deepest nesting of ``[`` / ``(`` groups a prompt schedule may have. The parser recurses once per level, so an
unbounded depth (1000 ``[``) overflowed Python's stack; no prompt written by a person nests anywhere near this."""

_PLAIN = re.compile(r"[^\\\[\]():|]+")
_NUMBER_THEN_CLOSE = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")


class _ScheduleParser:
    """Recursive descent over A1111's prompt-editing grammar.

    Inside a bracket group everything must be valid; at the top level a bracket that does not start a valid
    group is literal text (as A1111's grammar allows), and a ``|`` outside any alternation makes the whole
    prompt unparsable, which A1111 answers by using the prompt unchanged for every step.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self._depth = 0

    def parse(self) -> list[_Node] | None:
        text, nodes, position = self.text, [], 0
        while position < len(text):
            char = text[position]
            if char in "[(":
                try:
                    group, position = self._group(position)
                except _NoParse:
                    nodes.append(char)
                    position += 1
                    continue
                nodes.extend(group)
            elif char in "]):":
                nodes.append(char)
                position += 1
            elif char == "|":
                return None
            else:
                position = self._plain(position, nodes)
        return nodes

    def _plain(self, position: int, nodes: list[_Node]) -> int:
        text = self.text
        if text[position] == "\\":  # an escape stays in the text for the emphasis parser
            nodes.append(text[position : position + 2])
            return position + 2
        match = _PLAIN.match(text, position)
        assert match is not None
        nodes.append(match.group(0))
        return match.end()

    def _sequence(self, position: int) -> tuple[list[_Node], int]:
        """Text and groups up to the next ``] ) : |`` (or the end), which is left for the caller."""
        text, nodes = self.text, []
        while position < len(text):
            char = text[position]
            if char in "[(":
                group, position = self._group(position)
                nodes.extend(group)
            elif char in "]):|":
                break
            else:
                position = self._plain(position, nodes)
        return nodes, position

    def _at(self, position: int) -> str:
        return self.text[position] if position < len(self.text) else ""

    def _group(self, position: int) -> tuple[list[_Node], int]:
        """One bracket group; the depth bound keeps the recursion (and the re-scans after a failed group) small."""
        self._depth += 1
        try:
            if self._depth > MAX_BRACKET_DEPTH:
                raise EaselError(
                    f"The prompt's brackets are nested more than {MAX_BRACKET_DEPTH} deep (at character "
                    f"{position + 1}). Close some of them, or write literal brackets as \\( \\[."
                )
            return self._group_body(position)
        finally:
            self._depth -= 1

    def _group_body(self, position: int) -> tuple[list[_Node], int]:
        opening = self.text[position]
        first, position = self._sequence(position + 1)
        char = self._at(position)
        if opening == "(":
            if char == ")":
                return ["(", *first, ")"], position + 1
            if char == ":":
                second, position = self._sequence(position + 1)
                if self._at(position) == ")":
                    return ["(", *first, ":", *second, ")"], position + 1
            raise _NoParse
        if char == "]":
            return ["[", *first, "]"], position + 1
        if char == "|":
            options = [first]
            while self._at(position) == "|":
                option, position = self._sequence(position + 1)
                options.append(option)
            if self._at(position) != "]":
                raise _NoParse
            return [_Alternate(options)], position + 1
        if char == ":":
            number = _NUMBER_THEN_CLOSE.match(self.text, position + 1)
            if number:  # [to:when]
                return [_Scheduled([], first, float(number.group(1)))], number.end()
            second, position = self._sequence(position + 1)
            if self._at(position) == ":":
                number = _NUMBER_THEN_CLOSE.match(self.text, position + 1)
                if number:  # [from:to:when], [from::when]
                    return [_Scheduled(first, second, float(number.group(1)))], number.end()
        raise _NoParse


def _switch_step(when: float, steps: int) -> int:
    """``when`` below 1 is a fraction of the steps, otherwise a step number; capped at ``steps``."""
    return min(steps, int(when * steps if when < 1 else when))


def _collect_steps(nodes: Sequence[_Node], steps: int, found: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Scheduled):
            step = _switch_step(node.when, steps)
            if step >= 1:
                found.add(step)
            _collect_steps(node.before, steps, found)
            _collect_steps(node.after, steps, found)
        elif isinstance(node, _Alternate):
            found.update(range(1, steps + 1))
            for option in node.options:
                _collect_steps(option, steps, found)


def _render(nodes: Sequence[_Node], step: int, steps: int) -> str:
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, _Scheduled):
            chosen = node.before if step <= _switch_step(node.when, steps) else node.after
            parts.append(_render(chosen, step, steps))
        else:
            parts.append(_render(node.options[(step - 1) % len(node.options)], step, steps))
    return "".join(parts)


def schedule_prompt(text: str, steps: int) -> list[tuple[int, str]]:
    """``[(until_step, text), ...]`` for prompt editing and alternation, like A1111's prompt schedules.

    ``[from:to:when]`` shows ``from`` until step ``when`` (a fraction of ``steps`` when below 1), then ``to``;
    ``[to:when]`` adds text, ``[from::when]`` removes it; groups nest. ``[a|b]`` alternates every step. Steps
    here are 1-based, as in A1111; a prompt without any of this gives ``[(steps, text)]``.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if "[" not in text:
        return [(steps, text)]
    nodes = _ScheduleParser(text).parse()
    if nodes is None:
        return [(steps, text)]
    switch_steps = {steps}
    _collect_steps(nodes, steps, switch_steps)
    return [(step, _render(nodes, step, steps)) for step in sorted(switch_steps)]


def conditioning_schedule(text: str, steps: int) -> list[str]:
    """The prompt text for each sampling step ``0 .. steps-1``.

    Step ``i`` uses the first schedule entry whose ``until_step >= i``, exactly as A1111's sampler looks it up
    (its step counter starts at 0), so ``[a:b:10]`` at 20 steps uses ``a`` for steps 0-10 and an alternation
    uses its first option for steps 0 and 1. ``steps`` is the number of steps the sampler actually runs.
    """
    schedule = schedule_prompt(text, steps)
    per_step: list[str] = []
    entry = 0
    for step in range(steps):
        while schedule[entry][0] < step:
            entry += 1
        per_step.append(schedule[entry][1])
    return per_step


class StepRange(NamedTuple):
    """Steps ``start .. stop-1`` use ``text``."""

    start: int
    stop: int
    text: str


def group_steps(per_step: Sequence[str]) -> list[StepRange]:
    """Group consecutive equal texts, so the engine changes conditioning only where the text changes."""
    ranges: list[StepRange] = []
    for step, text in enumerate(per_step):
        if ranges and ranges[-1].text == text:
            ranges[-1] = ranges[-1]._replace(stop=step + 1)
        else:
            ranges.append(StepRange(step, step + 1, text))
    return ranges


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
