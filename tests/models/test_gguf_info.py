"""The GGUF header reader: the same answers as gguf's GGUFReader, from the header alone."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import pytest

from hearth.models.gguf_info import NotAGGUFError, read_gguf_info
from hearth.models.registry import embedded_model_path
from tests.models.fake_hub import tiny_gguf


def test_agrees_with_gguf_reader_on_the_embedded_model() -> None:
    path = embedded_model_path()
    reader = gguf.GGUFReader(path)

    def field(key: str) -> object:
        found = reader.get_field(key)
        return found.contents() if found is not None else None

    info = read_gguf_info(path)
    assert info.architecture == field("general.architecture") == "llama"
    assert info.context_length == field("llama.context_length")
    assert info.block_count == field("llama.block_count")
    assert info.embedding_length == field("llama.embedding_length")
    assert info.license == field("general.license")
    assert info.name == field("general.name")
    assert info.chat_template == field("tokenizer.chat_template")
    assert info.vocab_size == len(reader.get_field("tokenizer.ggml.tokens").data)
    assert info.parameters == sum(int(t.n_elements) for t in reader.tensors)
    file_type = gguf.LlamaFileType(field("general.file_type")).name
    assert info.quantization == file_type.removeprefix("MOSTLY_") == "Q4_1"
    assert info.size_bytes == path.stat().st_size


def test_a_written_gguf_reads_back(tmp_path: Path) -> None:
    info = read_gguf_info(tiny_gguf(tmp_path / "t.gguf", seed=1, context_length=777))
    assert (info.architecture, info.context_length, info.parameters) == ("llama", 777, 16 * 64)
    assert (info.quantization, info.license, info.chat_template) == ("Q4_K_M", "apache-2.0", None)


@pytest.mark.parametrize("endianess", [gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG])
def test_without_a_file_type_the_weights_name_the_quantization(
    tmp_path: Path, endianess: gguf.GGUFEndian
) -> None:
    path = tmp_path / "big.gguf"
    writer = gguf.GGUFWriter(path, "gemma3", endianess=endianess)
    writer.add_context_length(4096)
    writer.add_chat_template("{{ messages }}")
    writer.add_tensor("a", np.zeros((8, 32), dtype=np.float16))
    writer.add_tensor("b", np.zeros(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    info = read_gguf_info(path)
    assert (info.architecture, info.context_length, info.parameters) == ("gemma3", 4096, 264)
    assert (info.quantization, info.chat_template) == ("F16", "{{ messages }}")


def test_a_cut_short_file_is_refused_unless_only_the_header_is_wanted(tmp_path: Path) -> None:
    whole = tiny_gguf(tmp_path / "whole.gguf", seed=2)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[:-100])
    with pytest.raises(NotAGGUFError, match="is cut short"):
        read_gguf_info(cut)
    assert read_gguf_info(cut, require_complete=False).parameters == 16 * 64
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(whole.read_bytes()[:60])
    with pytest.raises(NotAGGUFError, match="cut short"):
        read_gguf_info(header_only, require_complete=False)


def test_what_is_not_a_gguf_is_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("hello, this is not a model at all")
    with pytest.raises(NotAGGUFError, match="does not start with 'GGUF'"):
        read_gguf_info(text)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(NotAGGUFError, match="only 0 bytes"):
        read_gguf_info(empty)
    # A GGUF magic followed by noise ends in a refusal, not a hang or a huge allocation.
    noise = tmp_path / "noise.gguf"
    noise.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + os.urandom(4096))
    with pytest.raises(NotAGGUFError):
        read_gguf_info(noise)
    with pytest.raises(NotAGGUFError, match="cannot read"):
        read_gguf_info(tmp_path / "missing.gguf")
