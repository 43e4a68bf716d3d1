from __future__ import annotations

import click
import pytest
from pydantic import ValidationError

from hearth.cli.serve import command as serve_command
from hearth.errors import ContextLengthExceededError, ModelNotFoundError
from hearth.server.http.errors import format_param, validation_error
from hearth.settings import ServeSettings, physical_cores


def test_error_bodies_have_openai_shape() -> None:
    error = ModelNotFoundError("no such model", param="model")
    assert error.status_code == 404
    assert error.to_body() == {
        "error": {
            "message": "no such model",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    assert ContextLengthExceededError("x").code == "context_length_exceeded"


@pytest.mark.parametrize(
    ("loc", "expected"),
    [
        (("temperature",), "temperature"),
        (("messages", 0, "user", "content"), "messages[0].content"),
        (("messages", 2, "role"), "messages[2].role"),
        (("stop", "str"), "stop"),
        (("stop", "list[str]", 1), "stop[1]"),
        (
            ("messages", 0, "user", "content", "list[...]", 0, "text", "text"),
            "messages[0].content[0].text",
        ),
    ],
)
def test_param_names_a_field(loc: tuple[int | str, ...], expected: str) -> None:
    assert format_param(loc) == expected


def test_unknown_argument_is_named() -> None:
    error = validation_error([{"type": "extra_forbidden", "loc": ("body", "foo"), "msg": "x"}])
    assert error.param == "foo"
    assert "foo" in error.message
    assert error.status_code == 400


def test_settings_read_env_and_split_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_PORT", "9001")
    monkeypatch.setenv("HEARTH_API_KEY", "k1, k2")
    monkeypatch.setenv("HEARTH_PARALLEL", "6")
    settings = ServeSettings()
    assert settings.port == 9001
    assert settings.api_key == ["k1", "k2"]
    assert settings.parallel == 6
    assert settings.host == "127.0.0.1"
    assert ServeSettings(port=1234).port == 1234  # an explicit flag wins over the env


def test_default_address_and_threads() -> None:
    settings = ServeSettings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8642)
    assert settings.threads == physical_cores() >= 1


def test_every_setting_has_a_flag_and_a_description() -> None:
    assert isinstance(serve_command, click.Command)
    flags = {p.name for p in serve_command.params}
    for name, field in ServeSettings.model_fields.items():
        assert name in flags, f"--{name.replace('_', '-')} is missing from `hearth serve`"
        assert field.description, f"setting {name} has no description"


@pytest.mark.parametrize(
    ("given", "seconds"),
    [("30d", 30 * 86400.0), ("12h", 43200.0), ("1h30m", 5400.0), ("90", 90.0), (3600, 3600.0)],
)
def test_responses_max_age_takes_seconds_or_durations(given: str | int, seconds: float) -> None:
    assert ServeSettings().responses_max_age_s == 30 * 86400.0  # the default
    assert ServeSettings(responses_max_age=given).responses_max_age_s == seconds


@pytest.mark.parametrize("given", ["0", "-1d", "soon", "", "10 days", "inf", True])
def test_responses_max_age_must_be_a_positive_duration(given: object) -> None:
    with pytest.raises(ValidationError, match="responses_max_age"):
        ServeSettings(responses_max_age=given)
