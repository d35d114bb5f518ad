"""A1111 prompt syntax: emphasis, network tags, prompt schedules, chunking and encoding with tiny text encoders."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from pipelines.conditioning.encoder import PromptEmbeds, PromptEncoder, pad_to_same_length, tokenize_prompt
from pipelines.conditioning.prompt_schedules import (
    StepRange,
    conditioning_schedule,
    group_steps,
    schedule_prompt,
)
from pipelines.conditioning.syntax import BREAK, NetworkTag, extract_network_tags, parse_prompt_attention
from pipelines.errors import EaselError
from pipelines.models.tokenizers import load_clip_tokenizer

BOS, EOS = 49406, 49407
COMMA = 267
X, Y = 343, 344  # "x</w>", "y</w>"
W = 1.1
D = 1 / 1.1

# ----------------------------------------------------------------------------------------------------------------
# Emphasis

ATTENTION_CASES = [
    ("normal text", [("normal text", 1.0)]),
    ("", [("", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", W), (" word", 1.0)]),
    ("a [quiet] word", [("a ", 1.0), ("quiet", D), (" word", 1.0)]),
    ("(cat:1.3)", [("cat", 1.3)]),
    ("( cat : 0.5 )", [(" cat ", 0.5)]),
    ("(cat:-1)", [("cat", -1.0)]),
    ("((cat))", [("cat", W * W)]),
    ("[[cat]]", [("cat", D * D)]),
    ("((cat:1.5))", [("cat", 1.5 * W)]),
    ("([cat])", [("cat", D * W)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.3 * W * W),
            (" ", W),
            ("on", 1.0),
            (" a ", W),
            ("hill", 0.55),
            (", sun, ", W),
            ("sky", W**4),  # the first "(" never closes
            (".", W),
        ],
    ),
    # escapes
    (r"\(literal\]", [("(literal]", 1.0)]),
    (r"\[x\)", [("[x)", 1.0)]),
    (r"a \\ b", [("a \\ b", 1.0)]),
    (r"(\(x\))", [("(x)", W)]),
    (r"a\b", [("ab", 1.0)]),  # a lone backslash is dropped, as in A1111
    # unbalanced
    ("(unbalanced", [("unbalanced", W)]),
    ("a (b [c", [("a ", 1.0), ("b ", W), ("c", W * D)]),
    ("a) b", [("a) b", 1.0)]),  # a stray closing bracket stays as text, as in A1111
    ("a] b", [("a] b", 1.0)]),
    ("x:1.2) y", [("x:1.2) y", 1.0)]),
    ("(x:1.2.3)", [("x:1.2.3)", W)]),  # not a number: text, the bracket stays open
    ("a: b", [("a: b", 1.0)]),
    # merging
    ("(unnecessary)(parens)", [("unnecessaryparens", W)]),
    ("(a)(b:1.1)", [("ab", W)]),
    ("(a) (b)", [("a", W), (" ", 1.0), ("b", W)]),
    # BREAK
    ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
    ("a BREAK BREAK b", [("a", 1.0), BREAK, BREAK, ("b", 1.0)]),
    ("BREAK", [BREAK]),
    ("a,BREAK,b", [("a,", 1.0), BREAK, (",b", 1.0)]),
    ("(a BREAK b)", [("a", W), BREAK, ("b", W)]),
    ("a break b", [("a break b", 1.0)]),
    ("aBREAK b", [("aBREAK b", 1.0)]),
]


@pytest.mark.parametrize(("text", "expected"), ATTENTION_CASES)
def test_parse_prompt_attention(text: str, expected: list[tuple[str, float]]) -> None:
    parsed = parse_prompt_attention(text)
    assert [part for part, _ in parsed] == [part for part, _ in expected]
    assert [weight for _, weight in parsed] == pytest.approx([weight for _, weight in expected])


def test_break_marker_is_the_documented_tuple() -> None:
    assert BREAK == ("BREAK", -1.0)


# ----------------------------------------------------------------------------------------------------------------
# Network tags


@pytest.mark.parametrize(
    ("text", "clean", "tags"),
    [
        ("a cat", "a cat", []),
        ("a <lora:foo:0.5> cat", "a  cat", [NetworkTag("lora", "foo", 0.5)]),
        ("<lora:foo>cat", "cat", [NetworkTag("lora", "foo", 1.0)]),
        ("<lyco:bar:1.2>", "", [NetworkTag("lyco", "bar", 1.2)]),
        ("<lora:x:0.2:0.7>", "", [NetworkTag("lora", "x", 0.2, unet_weight=0.7)]),
        ("<lora:x:te=0.3:unet=2>", "", [NetworkTag("lora", "x", 0.3, unet_weight=2.0)]),
        ("<LoRA: my style v2 : 0.8 >", "", [NetworkTag("lora", "my style v2", 0.8)]),
        (
            "a, <lora:a:1>, (b:1.2) <lora:c:-0.5>",
            "a, , (b:1.2) ",
            [NetworkTag("lora", "a", 1.0), NetworkTag("lora", "c", -0.5)],
        ),
        ("a <3 b", "a <3 b", []),
    ],
)
def test_extract_network_tags(text: str, clean: str, tags: list[NetworkTag]) -> None:
    assert extract_network_tags(text) == (clean, tags)


@pytest.mark.parametrize("text", ["<lora:foo:abc>", "<lora:foo:0.5:high>", "<lora:foo:te=x>", "<lora:foo:nan>"])
def test_malformed_network_tag_weight_names_the_tag(text: str) -> None:
    with pytest.raises(EaselError, match="<lora:foo:"):
        extract_network_tags("a cat " + text)


def test_network_tag_without_name() -> None:
    with pytest.raises(EaselError, match="no name"):
        extract_network_tags("<lora: :1>")


# ----------------------------------------------------------------------------------------------------------------
# Prompt editing and alternation

SCHEDULE_CASES = [
    ("a cat", 20, [(20, "a cat")]),
    ("a (cat:1.2) [dog]", 20, [(20, "a (cat:1.2) [dog]")]),
    ("a [cat:dog:0.5]", 20, [(10, "a cat"), (20, "a dog")]),
    ("a [cat:dog:5]", 20, [(5, "a cat"), (20, "a dog")]),
    ("a [cat:dog:0.25]", 10, [(2, "a cat"), (10, "a dog")]),  # int(2.5)
    ("a [red:5] cat", 20, [(5, "a  cat"), (20, "a red cat")]),
    ("a [red::5] cat", 20, [(5, "a red cat"), (20, "a  cat")]),
    ("a [cat:dog: 5 ]", 20, [(5, "a cat"), (20, "a dog")]),
    ("[cat:dog:0]", 20, [(20, "dog")]),
    ("[cat:dog:50]", 20, [(20, "cat")]),
    ("[[a:b:5]:c:10]", 20, [(5, "a"), (10, "b"), (20, "c")]),
    ("[a:[b:c:15]:5]", 20, [(5, "a"), (15, "b"), (20, "c")]),
    ("[a:b:3] and [c:d:6]", 10, [(3, "a and c"), (6, "b and c"), (10, "b and d")]),
    ("(x [a:b:3]:1.2)", 10, [(3, "(x a:1.2)"), (10, "(x b:1.2)")]),
    ("[a|b]", 4, [(1, "a"), (2, "b"), (3, "a"), (4, "b")]),
    ("[a|b|c] cat", 4, [(1, "a cat"), (2, "b cat"), (3, "c cat"), (4, "a cat")]),
    ("[a|]", 3, [(1, "a"), (2, ""), (3, "a")]),
    ("[a:[b|c]:2]", 4, [(1, "a"), (2, "a"), (3, "b"), (4, "c")]),
    (r"[a\]:b:2]", 4, [(2, r"a\]"), (4, "b")]),
    # not schedule syntax: kept as text for the emphasis parser
    ("[a:b]", 20, [(20, "[a:b]")]),
    ("[a:b:x]", 20, [(20, "[a:b:x]")]),
    ("[a:b:c:5]", 20, [(20, "[a:b:c:5]")]),
    ("[a:b:x] [c:d:5]", 20, [(5, "[a:b:x] c"), (20, "[a:b:x] d")]),
    ("a | b [c:d:5]", 20, [(20, "a | b [c:d:5]")]),  # a stray "|" makes A1111 use the prompt as it is
    ("(a [b:c:5]", 20, [(5, "(a b"), (20, "(a c")]),
]


@pytest.mark.parametrize(("text", "steps", "expected"), SCHEDULE_CASES)
def test_schedule_prompt(text: str, steps: int, expected: list[tuple[int, str]]) -> None:
    assert schedule_prompt(text, steps) == expected


def test_conditioning_schedule_per_step() -> None:
    # A1111 looks up the 0-based sampler step against 1-based "until" steps.
    assert conditioning_schedule("[a:b:2]", 5) == ["a", "a", "a", "b", "b"]
    assert conditioning_schedule("[a|b]", 5) == ["a", "a", "b", "a", "b"]
    assert conditioning_schedule("a cat", 3) == ["a cat"] * 3
    assert len(conditioning_schedule("[a:[b|c]:0.5]", 30)) == 30


def test_group_steps() -> None:
    assert group_steps(conditioning_schedule("[a:b:2]", 5)) == [StepRange(0, 3, "a"), StepRange(3, 5, "b")]
    assert group_steps(["x"] * 4) == [StepRange(0, 4, "x")]
    assert group_steps(["a", "b", "a"]) == [StepRange(0, 1, "a"), StepRange(1, 2, "b"), StepRange(2, 3, "a")]
    assert group_steps([]) == []


def test_schedule_rejects_zero_steps() -> None:
    with pytest.raises(ValueError):
        schedule_prompt("a", 0)


# ----------------------------------------------------------------------------------------------------------------
# Tokens and chunks


@pytest.fixture(scope="module")
def tokenizer():
    return load_clip_tokenizer()


@pytest.fixture(scope="module")
def openclip_tokenizer():
    return load_clip_tokenizer(pad_token="!")


def test_short_prompt_is_one_chunk(tokenizer) -> None:
    chunks, count = tokenize_prompt("a photo of a (cat:1.5)", tokenizer)
    assert count == 5
    assert len(chunks) == 1
    assert chunks[0].tokens == (320, 1125, 539, 320, 2368)
    assert chunks[0].weights == (1.0, 1.0, 1.0, 1.0, 1.5)
    ids = chunks[0].input_ids(BOS, EOS, EOS)
    assert ids == tokenizer("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert chunks[0].token_weights() == [1.0] * 5 + [1.5] + [1.0] * 71


def test_openclip_padding_follows_the_end_token(tokenizer, openclip_tokenizer) -> None:
    chunk = tokenize_prompt("a cat", tokenizer).chunks[0]
    expected = openclip_tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert chunk.input_ids(BOS, EOS, openclip_tokenizer.pad_token_id) == expected
    assert expected[:4] == [BOS, 320, 2368, EOS] and expected[4:] == [0] * 73


def test_empty_prompt_is_one_empty_chunk(tokenizer) -> None:
    chunks, count = tokenize_prompt("", tokenizer)
    assert count == 0
    assert [chunk.tokens for chunk in chunks] == [()]
    assert chunks[0].input_ids(BOS, EOS, EOS) == [BOS] + [EOS] * 76


def test_break_starts_a_new_chunk(tokenizer) -> None:
    chunks, count = tokenize_prompt("a BREAK (cat:1.2)", tokenizer)
    assert [chunk.tokens for chunk in chunks] == [(320,), (2368,)]
    assert [chunk.weights for chunk in chunks] == [(1.0,), (1.2,)]
    assert count == 76
    assert [chunk.tokens for chunk in tokenize_prompt("a BREAK", tokenizer).chunks] == [(320,)]
    assert [chunk.tokens for chunk in tokenize_prompt("BREAK a", tokenizer).chunks] == [(), (320,)]


def test_long_prompt_splits_at_75_tokens(tokenizer) -> None:
    chunks, count = tokenize_prompt("x " * 100, tokenizer)
    assert [len(chunk.tokens) for chunk in chunks] == [75, 25]
    assert count == 100


def test_comma_backtrack_moves_the_phrase_to_the_next_chunk(tokenizer) -> None:
    text = "x " * 70 + ", " + "y " * 10
    chunks, _ = tokenize_prompt(text, tokenizer)
    assert chunks[0].tokens == (X,) * 70 + (COMMA,)
    assert chunks[1].tokens == (Y,) * 10


def test_comma_backtrack_keeps_weights_with_their_tokens(tokenizer) -> None:
    text = "x " * 70 + ", (y:1.5) " + "y " * 9
    chunks, _ = tokenize_prompt(text, tokenizer)
    assert chunks[1].tokens == (Y,) * 10
    assert chunks[1].weights == (1.5,) + (1.0,) * 9


def test_comma_further_back_than_20_tokens_does_not_move(tokenizer) -> None:
    text = "x " * 50 + ", " + "y " * 50
    chunks, _ = tokenize_prompt(text, tokenizer)
    assert chunks[0].tokens == (X,) * 50 + (COMMA,) + (Y,) * 24
    assert chunks[1].tokens == (Y,) * 26


# ----------------------------------------------------------------------------------------------------------------
# Encoding with tiny random text encoders


def _config(hidden: int, **overrides) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=BOS,
        eos_token_id=EOS,
        **overrides,
    )


@pytest.fixture(scope="module")
def text_encoders() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    clip_l = CLIPTextModel(_config(64, hidden_act="quick_gelu")).eval()
    bigg = CLIPTextModelWithProjection(_config(96, hidden_act="gelu")).eval()
    return {"clip_l": clip_l, "bigg": bigg}


@pytest.fixture(scope="module")
def sd1(tokenizer, text_encoders) -> PromptEncoder:
    return PromptEncoder([(tokenizer, text_encoders["clip_l"])], kind="sd1")


@pytest.fixture(scope="module")
def sdxl(tokenizer, openclip_tokenizer, text_encoders) -> PromptEncoder:
    pairs = [(tokenizer, text_encoders["clip_l"]), (openclip_tokenizer, text_encoders["bigg"])]
    return PromptEncoder(pairs, kind="sdxl")


def _plain_ids(tokenizer, text: str) -> torch.Tensor:
    return tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def _plain_sd1(tokenizer, text_encoder, text: str) -> torch.Tensor:
    return text_encoder(input_ids=_plain_ids(tokenizer, text)).last_hidden_state


@pytest.mark.parametrize(
    ("prompt", "plain"),
    [("a photo of a cat", "a photo of a cat"), ("(a photo of a cat:1.0)", "a photo of a cat"), ("", "")],
)
def test_unweighted_prompt_equals_the_plain_encoding(sd1, tokenizer, text_encoders, prompt: str, plain: str) -> None:
    embeds = sd1.encode(prompt)
    assert embeds.pooled is None
    assert embeds.embeds.shape == (1, 77, 64)
    assert torch.equal(embeds.embeds, _plain_sd1(tokenizer, text_encoders["clip_l"], plain))


def test_weighted_prompt_scales_tokens_and_keeps_the_mean(sd1, tokenizer, text_encoders) -> None:
    plain = _plain_sd1(tokenizer, text_encoders["clip_l"], "a photo of a cat")[0]
    weighted = sd1.encode("a photo of a (cat:1.5)").embeds[0]
    assert not torch.allclose(weighted, plain)
    weights = torch.ones(77)
    weights[5] = 1.5  # bos, a, photo, of, a, cat
    expected = plain * weights[:, None]
    expected = expected * (plain.mean() / expected.mean())
    torch.testing.assert_close(weighted, expected)
    torch.testing.assert_close(weighted.mean(), plain.mean())
    assert not torch.allclose(sd1.encode("a photo of a [cat]").embeds[0], plain)


def test_network_tags_are_not_encoded(sd1) -> None:
    assert torch.equal(sd1.encode("a <lora:style:0.7>cat").embeds, sd1.encode("a cat").embeds)


def test_long_prompt_gives_154_tokens(sd1) -> None:
    embeds = sd1.encode("x " * 100)
    assert embeds.embeds.shape == (1, 154, 64)
    assert embeds.num_chunks == 2
    assert sd1.encode("a BREAK b").embeds.shape == (1, 154, 64)
    # the two chunks of "a BREAK b" go through the text encoder as a batch of 2, "a" alone as a batch of 1: other
    # GEMM kernels, so equal up to float rounding, not bit for bit
    torch.testing.assert_close(sd1.encode("a BREAK b").embeds[:, :77], sd1.encode("a").embeds)


def test_cond_and_uncond_are_padded_with_empty_chunks(sd1) -> None:
    cond, uncond = sd1.encode("x " * 100), sd1.encode("")
    padded_cond, padded_uncond = sd1.pad_to_same_length(cond, uncond)
    assert padded_cond is cond
    assert padded_uncond.embeds.shape == cond.embeds.shape == (1, 154, 64)
    empty = sd1.encode_empty_chunk()
    assert torch.equal(padded_uncond.embeds[:, :77], uncond.embeds)
    assert torch.equal(padded_uncond.embeds[:, 77:], empty)
    assert torch.equal(empty, uncond.embeds)
    # the module-level function, the other way round, and with a longer uncond
    short, long = pad_to_same_length(sd1.encode("a"), sd1.encode("y " * 160))
    assert short.embeds.shape == long.embeds.shape == (1, 231, 64)
    assert torch.equal(short.embeds[:, 154:], empty)
    with pytest.raises(ValueError):
        pad_to_same_length(PromptEmbeds(torch.zeros(1, 77, 64)), cond)


def test_padding_uses_the_matching_clip_skip(sd1) -> None:
    _, uncond = pad_to_same_length(sd1.encode("x " * 100, clip_skip=2), sd1.encode("", clip_skip=2))
    assert torch.equal(uncond.embeds[:, 77:], sd1.encode_empty_chunk(clip_skip=2))
    assert not torch.equal(uncond.embeds[:, 77:], sd1.encode_empty_chunk(clip_skip=1))


def test_clip_skip(sd1, tokenizer, text_encoders) -> None:
    one, two = sd1.encode("a photo of a cat"), sd1.encode("a photo of a cat", clip_skip=2)
    assert not torch.allclose(one.embeds, two.embeds)
    assert two.clip_skip == 2
    model = text_encoders["clip_l"]
    with torch.no_grad():
        hidden = model(input_ids=_plain_ids(tokenizer, "a photo of a cat"), output_hidden_states=True).hidden_states
        expected = model.final_layer_norm(hidden[-2])
    assert torch.equal(two.embeds, expected)
    with pytest.raises(EaselError, match="Clip skip"):
        sd1.encode("a", clip_skip=4)
    with pytest.raises(EaselError, match="Clip skip"):
        sd1.encode("a", clip_skip=0)


def test_sdxl_concatenates_penultimate_states_and_pools_the_second_encoder(
    sdxl, tokenizer, openclip_tokenizer, text_encoders
) -> None:
    embeds = sdxl.encode("a photo of a cat")
    assert sdxl.embed_dim == 160
    assert embeds.embeds.shape == (1, 77, 64 + 96)
    assert embeds.pooled is not None and embeds.pooled.shape == (1, 32)
    with torch.no_grad():
        first = text_encoders["clip_l"](input_ids=_plain_ids(tokenizer, "a photo of a cat"), output_hidden_states=True)
        second = text_encoders["bigg"](
            input_ids=_plain_ids(openclip_tokenizer, "a photo of a cat"), output_hidden_states=True
        )
    assert torch.equal(embeds.embeds, torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1))
    assert torch.equal(embeds.pooled, second.text_embeds)
    skipped = sdxl.encode("a photo of a cat", clip_skip=2)
    assert torch.equal(skipped.embeds, torch.cat([first.hidden_states[-3], second.hidden_states[-3]], dim=-1))


def test_sdxl_long_prompt_pools_the_first_chunk(sdxl) -> None:
    long = sdxl.encode("a photo of a cat, " + "x " * 100)
    assert long.embeds.shape == (1, 154, 160)
    # chunks run as one batch, so compare closely rather than bit for bit
    torch.testing.assert_close(long.pooled, sdxl.encode("a photo of a cat, " + "x " * 69).pooled)
    cond, uncond = sdxl.pad_to_same_length(long, sdxl.encode(""))
    assert uncond.embeds.shape == (1, 154, 160)
    assert torch.equal(uncond.pooled, sdxl.encode("").pooled)


def test_sdxl_refiner_uses_only_the_second_encoder(openclip_tokenizer, text_encoders) -> None:
    refiner = PromptEncoder([(openclip_tokenizer, text_encoders["bigg"])], kind="sdxl_refiner")
    embeds = refiner.encode("a (cat:1.2)")
    assert embeds.embeds.shape == (1, 77, 96)
    assert embeds.pooled is not None and embeds.pooled.shape == (1, 32)


def test_wrong_number_of_encoders_is_refused(tokenizer, text_encoders) -> None:
    with pytest.raises(ValueError):
        PromptEncoder([(tokenizer, text_encoders["clip_l"])], kind="sdxl")
    with pytest.raises(ValueError):
        PromptEncoder([(tokenizer, text_encoders["clip_l"])], kind="sd3")


def test_count_tokens(sd1) -> None:
    assert sd1.count_tokens("") == (0, 75)
    assert sd1.count_tokens("a photo of a cat") == (5, 75)
    assert sd1.count_tokens("a photo of a (cat:1.3) <lora:x:0.5>") == (5, 75)
    assert sd1.count_tokens("a <lora:x:bad> cat") == (2, 75)  # the counter never fails while typing
    assert sd1.count_tokens("x " * 100) == (100, 150)
    assert sd1.count_tokens("a BREAK b") == (76, 150)
    assert sd1.count_tokens("[a:x x x x:5]") == (4, 75)


# ----------------------------------------------------------------------------------------------------------------
# Textual inversion


def test_textual_inversion_inserts_vectors(tokenizer, text_encoders, sd1) -> None:
    model = text_encoders["clip_l"]
    red_dog = model.embeddings.token_embedding.weight[[736, 1929]].detach().clone()  # "red", "dog"
    encoder = PromptEncoder([(tokenizer, model)], kind="sd1", embeddings={"myemb": red_dog})
    assert encoder.embedding_names == ["myemb"]
    chunk = encoder.tokenize("a myemb, cat").chunks[0]
    assert chunk.tokens == (320, 0, 0, COMMA, 2368)
    assert chunk.embeddings == ((1, "myemb"),)
    assert torch.equal(encoder.encode("a myemb, cat").embeds, sd1.encode("a red dog, cat").embeds)
    torch.testing.assert_close(encoder.encode("a (myemb:1.3) cat").embeds, sd1.encode("a (red dog:1.3) cat").embeds)
    assert encoder.count_tokens("a myemb") == (3, 75)
    # the shared model is left as it was
    assert not model.embeddings.token_embedding._forward_hooks
    assert torch.equal(sd1.encode("a myemb").embeds, _plain_sd1(tokenizer, model, "a myemb"))


def test_textual_inversion_does_not_straddle_chunks(tokenizer, text_encoders) -> None:
    vectors = torch.randn(4, 64)
    encoder = PromptEncoder([(tokenizer, text_encoders["clip_l"])], kind="sd1", embeddings={"myemb": vectors})
    chunks = encoder.tokenize("x " * 73 + "myemb").chunks
    assert [len(chunk.tokens) for chunk in chunks] == [73, 4]
    assert chunks[1].embeddings == ((0, "myemb"),)
    assert encoder.encode("x " * 73 + "myemb").embeds.shape == (1, 154, 64)


def test_textual_inversion_for_sdxl_and_incompatible_ones_skipped(tokenizer, openclip_tokenizer, text_encoders) -> None:
    pairs = [(tokenizer, text_encoders["clip_l"]), (openclip_tokenizer, text_encoders["bigg"])]
    embeddings = {"good": (torch.randn(2, 64), torch.randn(2, 96)), "sd1only": torch.randn(2, 64)}
    encoder = PromptEncoder(pairs, kind="sdxl", embeddings=embeddings)
    assert encoder.embedding_names == ["good"]
    assert "sd1only" in encoder.skipped_embeddings
    with_embedding = encoder.encode("a good cat")
    assert with_embedding.embeds.shape == (1, 77, 160)
    assert not torch.allclose(with_embedding.embeds, encoder.encode("a cat").embeds)
    assert encoder.tokenize("a sd1only cat").chunks[0].embeddings == ()


def test_prompt_embeds_num_chunks() -> None:
    assert PromptEmbeds(torch.zeros(1, 231, 8)).num_chunks == 3
