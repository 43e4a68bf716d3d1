"""What `hearth pull` makes of its argument, and which of a repo's GGUF files it picks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hearth.models.pull import (
    HubFile,
    HubSource,
    LocalSource,
    PullError,
    parse_source,
    quant_of,
    select_gguf,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hf.co/bartowski/Llama-3.2-1B-GGUF", HubSource("bartowski/Llama-3.2-1B-GGUF")),
        ("hf.co/org/repo:Q4_K_M", HubSource("org/repo", quant="Q4_K_M")),
        ("huggingface.co/org/repo:iq2_xs", HubSource("org/repo", quant="iq2_xs")),
        ("https://huggingface.co/org/repo", HubSource("org/repo")),
        ("hf.co/org/repo/model-Q8_0.gguf", HubSource("org/repo", filename="model-Q8_0.gguf")),
        ("hf.co/org/repo/sub/dir/m.GGUF", HubSource("org/repo", filename="sub/dir/m.GGUF")),
        ("./models/x.gguf", LocalSource(Path("models/x.gguf"))),
        ("/abs/y.gguf", LocalSource(Path("/abs/y.gguf"))),
    ],
)
def test_parse_source(text: str, expected: HubSource | LocalSource) -> None:
    assert parse_source(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("hf.co/just-an-org", "expected hf.co/ORG/REPO[:QUANT]"),
        ("hf.co/org/repo/README.md", "only .gguf files can be pulled"),
        ("hf.co/org/re po", "expected hf.co/ORG/REPO[:QUANT]"),
        ("hf.co/org/repo:Q4 K", "is not a quantization name"),
        ("Not a name!", "give hf.co/ORG/REPO[:QUANT]"),
    ],
)
def test_parse_source_refuses_with_a_reason(text: str, problem: str) -> None:
    with pytest.raises(PullError, match=re.escape(problem)):
        parse_source(text)


@pytest.mark.parametrize(
    ("filename", "quant"),
    [
        ("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("smollm2-135m-instruct-q8_0.gguf", "Q8_0"),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
        ("model_IQ2_XS.gguf", "IQ2_XS"),
        ("qwen2.5-0.5b-instruct-fp16.gguf", "FP16"),
        ("gemma-3-270m-it-BF16.gguf", "BF16"),
        ("Qwen3-8B-UD-Q4_K_XL.gguf", "Q4_K_XL"),
        ("big-Q4_K_M-00001-of-00003.gguf", "Q4_K_M"),
        ("ggml-model.gguf", None),
        ("Qwen3-4B.gguf", None),
    ],
)
def test_quant_of(filename: str, quant: str | None) -> None:
    assert quant_of(filename) == quant


FILES = [
    HubFile("README.md", 100),
    HubFile("m-Q2_K.gguf", 300),
    HubFile("m-Q4_K_M.gguf", 500),
    HubFile("m-Q4_K_S.gguf", 480),
    HubFile("m-Q8_0.gguf", 900),
    HubFile("mmproj-m-f16.gguf", 50),
]


def test_the_default_is_q4_k_m_with_a_note_naming_the_others() -> None:
    chosen, note = select_gguf(FILES, None)
    assert chosen.filename == "m-Q4_K_M.gguf"
    assert note == (
        "Picked m-Q4_K_M.gguf (the default quantization, Q4_K_M). "
        "Also available: Q2_K, Q4_K_S, Q8_0; pull one with hf.co/ORG/REPO:QUANT."
    )


def test_without_q4_k_m_the_smallest_model_file_is_picked() -> None:
    files = [f for f in FILES if "Q4_K_M" not in f.filename]
    chosen, note = select_gguf(files, None)
    assert chosen.filename == "m-Q2_K.gguf"  # the projector is smaller, but never picked
    assert note is not None and "the smallest" in note


def test_the_only_gguf_is_picked() -> None:
    chosen, note = select_gguf([HubFile("README.md"), HubFile("model.gguf", 10)], None)
    assert chosen.filename == "model.gguf"
    assert note == "Picked model.gguf (the repo's only GGUF)."


@pytest.mark.parametrize(
    ("quant", "filename"),
    [("q4_k_m", "m-Q4_K_M.gguf"), ("Q4_K_S", "m-Q4_K_S.gguf"), ("q8", "m-Q8_0.gguf")],
)
def test_a_quant_picks_its_file_case_insensitively(quant: str, filename: str) -> None:
    chosen, note = select_gguf(FILES, quant)
    assert (chosen.filename, note) == (filename, None)


def test_an_ambiguous_or_missing_quant_is_refused() -> None:
    with pytest.raises(PullError, match=re.escape("'Q4_K' matches several files")):
        select_gguf(FILES, "Q4_K")
    with pytest.raises(PullError, match=re.escape("the repo has Q2_K, Q4_K_M, Q4_K_S, Q8_0")):
        select_gguf(FILES, "Q6_K")
    with pytest.raises(PullError, match=re.escape("no .gguf model file")):
        select_gguf([HubFile("README.md"), HubFile("mmproj-x.gguf")], None)
