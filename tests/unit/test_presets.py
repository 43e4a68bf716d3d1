"""Presets: parsing hearth.toml, validating it against the catalog, applying one to a conversation;
and the memory estimate read from a GGUF header."""

from __future__ import annotations

import logging
import math
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from hearth.errors import ModelNotFoundError
from hearth.models.footprint import (
    estimate_bytes,
    kv_cache_scale,
    model_shape,
    read_metadata,
)
from hearth.models.presets import Preset, PresetError, load_presets
from hearth.models.registry import embedded_model_path
from hearth.protocol.openai import ChatCompletionRequest, CompletionRequest
from hearth.server.catalog import ModelSpec, ServerCatalog
from hearth.server.core.conversation import Conversation
from hearth.server.core.prepare import preset_max_tokens, preset_sampling, with_preset
from hearth.server.openai.chat import chat_conversation
from hearth.server.openai.common import openai_sampling
from hearth.settings import ServeSettings

PIRATE = """
[models."pirate"]
base = "smollm2:135m"
system = "You are a pirate."
ctx_size = 2048
parallel = 2
keep_alive = "10m"
[models."pirate".params]
temperature = 0.2
max_tokens = 3
stop = ["Arr"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hearth.toml"
    path.write_text(text)
    return path


def chat(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "pirate", "messages": [{"role": "user", "content": "Hi"}], **fields}
    )


def pirate(tmp_path: Path) -> Preset:
    return load_presets(write(tmp_path, PIRATE))["pirate"]


# -- the file ----------------------------------------------------------------------------------


def test_a_presets_file_parses(tmp_path: Path) -> None:
    preset = pirate(tmp_path)
    assert preset.base == "smollm2:135m"
    assert (preset.ctx_size, preset.parallel, preset.keep_alive) == (2048, 2, "10m")
    assert preset.params.temperature == 0.2 and preset.params.stop == ["Arr"]


def test_an_absent_file_is_no_presets_unless_it_was_asked_for(tmp_path: Path) -> None:
    assert load_presets(tmp_path / "hearth.toml") == {}
    with pytest.raises(PresetError, match="no such file"):
        load_presets(tmp_path / "hearth.toml", required=True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[models."p"]\nbase = "x"\ntemprature = 1\n', "models.p.temprature: Extra inputs"),
        ('[models."p"]\nsystem = "x"\n', "models.p.base: Field required"),
        ('[models."p"]\nbase = "x"\n[models."p".params]\ntemperature = 5\n', "temperature"),
        ('[models."p"]\nbase = "x"\nkeep_alive = "soon"\n', "models.p.keep_alive"),
        ('[models."p"]\nbase = "x"\nparallel = 0\n', "models.p.parallel"),
        ('[models."p"]\nbase = "x"\n[models."p".params]\nstop = ["a","b","c","d","e"]\n', "stop"),
        ("[models\n", "not valid TOML"),
    ],
)
def test_a_bad_file_is_one_clear_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(PresetError, match=message) as caught:
        load_presets(write(tmp_path, text))
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(str(tmp_path))


# -- applying a preset (once, to the protocol-free conversation) -------------------------------


def conversation(request: ChatCompletionRequest) -> Conversation:
    return chat_conversation(request)


def test_the_system_prompt_goes_first_when_the_chat_has_none(tmp_path: Path) -> None:
    applied = with_preset(conversation(chat()), pirate(tmp_path))
    assert [m.role for m in applied.messages] == ["system", "user"]
    assert applied.messages[0].text == "You are a pirate."


@pytest.mark.parametrize("role", ["system", "developer"])
def test_the_chats_own_system_message_wins(tmp_path: Path, role: str) -> None:
    request = ChatCompletionRequest.model_validate(
        {
            "model": "pirate",
            "messages": [{"role": role, "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        }
    )
    applied = with_preset(conversation(request), pirate(tmp_path))
    assert [m.text for m in applied.messages] == ["Be brief.", "Hi"]


def test_sampling_defaults_fill_only_what_the_request_left_unset(tmp_path: Path) -> None:
    preset = pirate(tmp_path)
    applied = with_preset(conversation(chat()), preset)
    assert (applied.sampling.temperature, applied.max_tokens, applied.sampling.stop) == (
        0.2,
        3,
        ("Arr",),
    )
    own = with_preset(
        conversation(chat(temperature=1.0, stop="Ahoy", max_completion_tokens=9)), preset
    )
    assert (own.sampling.temperature, own.sampling.stop, own.max_tokens) == (1.0, ("Ahoy",), 9)
    explicit_zero = with_preset(conversation(chat(temperature=0)), preset)
    assert explicit_zero.sampling.temperature == 0
    cleared = with_preset(conversation(chat(stop=[])), preset)
    assert cleared.sampling.stop == ()  # an explicit empty list: no stop strings at all


def test_no_limit_asked_for_keeps_the_presets_limit_off(tmp_path: Path) -> None:
    preset = pirate(tmp_path)
    unlimited = replace(conversation(chat()), unlimited=True)  # Ollama's num_predict -1
    assert with_preset(unlimited, preset).max_tokens is None
    assert preset_max_tokens(None, preset, unlimited=False) == 3
    assert preset_max_tokens(7, preset, unlimited=False) == 7


def test_a_raw_prompt_takes_the_sampling_defaults(tmp_path: Path) -> None:
    preset = pirate(tmp_path)
    request = CompletionRequest.model_validate({"model": "pirate", "prompt": "Once"})
    sampling = preset_sampling(openai_sampling(request), preset)
    assert (sampling.temperature, sampling.stop) == (0.2, ("Arr",))


def test_no_preset_leaves_the_conversation_as_it_is() -> None:
    plain = conversation(chat())
    assert with_preset(plain, None) is plain
    assert preset_sampling(plain.sampling, None) is plain.sampling


# -- validation against the models -------------------------------------------------------------


def _never_load(spec: ModelSpec) -> object:
    raise AssertionError("a unit test loads no model")


def catalog(tmp_path: Path, text: str, **settings: object) -> ServerCatalog:
    return ServerCatalog(
        ServeSettings.model_validate(settings),
        load_presets(write(tmp_path, text)),
        _never_load,  # type: ignore[arg-type]
    )


def test_catalog_names_aliases_and_their_specs(tmp_path: Path) -> None:
    served = catalog(tmp_path, PIRATE, ctx_size=512, parallel=4)
    assert served.names() == ["smollm2:135m", "gemma3:270m", "pirate"]
    spec = served.spec("pirate")
    assert (spec.source, spec.ctx_size, spec.parallel) == (None, 2048, 2)
    assert served.spec("smollm2:135m").ctx_size == 512
    with pytest.raises(ModelNotFoundError, match="smollm2:135m, gemma3:270m, pirate"):
        served.check("llama")


def test_keep_alive_defaults(tmp_path: Path) -> None:
    served = catalog(tmp_path, PIRATE + '[models."plain"]\nbase = "smollm2:135m"\n')
    assert served.default_keep_alive("smollm2:135m") == math.inf  # the startup model is pinned
    assert served.default_keep_alive("pirate") == 600.0  # its preset's
    assert served.default_keep_alive("plain") == 300.0  # --keep-alive's default
    explicit = catalog(tmp_path, PIRATE, keep_alive="30s")
    assert explicit.default_keep_alive("smollm2:135m") == 30.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[models."smollm2:135m"]\nbase = "smollm2:135m"\n', "already the name of a model"),
        ('[models."p"]\nbase = "nope"\n', r"models\.p\.base: unknown model 'nope'"),
        ('[models."p"]\nbase = "/no/such.gguf"\n', "no such model file"),
        ('[models."a"]\nbase = "smollm2:135m"\n[models."b"]\nbase = "a"\n', "is an alias"),
        ('[models."p"]\nbase = "smollm2:135m"\nparallel = 100\n', "max-batch-tokens"),
    ],
)
def test_catalog_refuses_presets_that_could_never_load(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(PresetError, match=message):
        catalog(tmp_path, text, max_batch_tokens=64)


def test_an_alias_may_hide_a_model_in_ollamas_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.models.fake_registry import ollama_store

    # Another program's store must not stop `hearth serve` starting: the alias wins, with a word.
    ollama_root = tmp_path / "ollama"
    ollama_store(ollama_root, "pirate", "latest", embedded_model_path())
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama_root))
    with caplog.at_level(logging.WARNING, logger="hearth.server.catalog"):
        served = catalog(tmp_path, PIRATE.replace('"pirate"', '"pirate:latest"'))
    assert "hides the model of that name in Ollama's store" in caplog.text
    assert served.spec("pirate:latest").preset is not None
    assert served.spec("pirate:latest").source is None  # the alias's base, not Ollama's blob


def test_a_gguf_startup_model_is_served_under_its_stem_and_can_be_a_base(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny-copy.gguf"
    gguf.write_bytes(b"GGUF")
    served = catalog(
        tmp_path, '[models."p"]\nbase = "tiny-copy"\n', model=str(gguf), keep_alive="1m"
    )
    assert served.names() == ["tiny-copy", "smollm2:135m", "gemma3:270m", "p"]
    assert served.spec("p").source == str(gguf)
    assert served.spec("smollm2:135m").source == "smollm2:135m"


# -- memory estimate ---------------------------------------------------------------------------


def test_kv_estimate_of_the_embedded_model_matches_llama_cpp() -> None:
    path = embedded_model_path()
    shape = model_shape(path)
    # 30 layers × 3 KV heads × (64 + 64) × 2 bytes: 22.5 KiB per token, as llama.cpp reports
    assert (shape.layers, shape.kv_bytes_per_token) == (30, 23040)
    assert estimate_bytes(path, 1000) == path.stat().st_size + 23040 * 1000


@pytest.mark.parametrize(
    ("type_k", "type_v", "kv_mib"),
    # llama.cpp's own KV buffer sizes for 16 × 2048 cells of the embedded model.
    [
        ("f16", "f16", 720.0),
        ("q8_0", "q8_0", 382.5),
        ("q4_0", "q4_0", 202.5),
        ("q8_0", "f16", 551.25),
    ],
)
def test_kv_estimate_follows_the_cache_types(type_k: str, type_v: str, kv_mib: float) -> None:
    path = embedded_model_path()
    scale = kv_cache_scale(type_k, type_v)
    assert estimate_bytes(path, 16 * 2048, scale) - path.stat().st_size == kv_mib * 2**20


def test_metadata_reader_skips_arrays_and_reads_scalars(tmp_path: Path) -> None:
    def string(text: str) -> bytes:
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 3)
    header += string("tokenizer.tokens") + struct.pack("<IIQ", 9, 8, 2) + string("a") + string("b")
    header += string("general.architecture") + struct.pack("<I", 8) + string("gemma3")
    header += string("gemma3.block_count") + struct.pack("<II", 4, 18)
    path = tmp_path / "tiny.gguf"
    path.write_bytes(header)
    assert read_metadata(path, lambda key: True) == {
        "general.architecture": "gemma3",
        "gemma3.block_count": 18,
    }
    (tmp_path / "not.gguf").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a GGUF"):
        read_metadata(tmp_path / "not.gguf", lambda key: True)


# -- the serve flags ---------------------------------------------------------------------------


def test_serve_flags_take_sizes_and_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from hearth.cli import serve as serve_cli

    seen: list[ServeSettings] = []
    monkeypatch.setattr(serve_cli, "serve", seen.append)
    runner = CliRunner()
    args = ["--max-memory", "4GiB", "--keep-alive", "10m", "--max-loaded-models", "2"]
    assert runner.invoke(serve_cli.command, args).exit_code == 0
    assert (seen[0].max_memory, seen[0].keep_alive, seen[0].max_loaded_models) == (
        4 * 2**30,
        "10m",
        2,
    )
    bad = runner.invoke(serve_cli.command, ["--keep-alive", "soon"])
    assert bad.exit_code == 2 and "--keep-alive: invalid keep_alive 'soon'" in bad.output
    bad = runner.invoke(serve_cli.command, ["--max-memory", "lots"])
    assert bad.exit_code == 2 and "--max-memory" in bad.output
