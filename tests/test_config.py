"""ApiKey, load_api_key and ApiConfig: the key never prints, and unsafe settings fail before connecting."""

from __future__ import annotations

import os
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from pipeline.api.config import ApiConfig, ApiKey, load_api_key
from pipeline.errors import ConfigError

KEY = "sk-config-test-0f9e8d7c6b5a"
DEFAULT_BASE_URL = "https://developer.photogptai.com/api"


def _key_file(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "photogpt.key"
    path.write_text(text)
    os.chmod(path, mode)
    return path


class TestApiKey:
    def test_repr_str_and_format_are_masked(self) -> None:
        """Every way of printing the key shows ``***``; reveal() gives the value."""
        key = ApiKey(KEY)
        assert repr(key) == "ApiKey('***')"
        assert str(key) == "***"
        assert f"{key} {key!r}" == "*** ApiKey('***')"
        assert KEY not in repr([key]) + repr({"k": key})
        assert key.reveal() == KEY

    def test_equality_is_by_value(self) -> None:
        """Two wrappers of the same value are equal and hash alike; other values and types are not."""
        assert ApiKey(KEY) == ApiKey(KEY)
        assert hash(ApiKey(KEY)) == hash(ApiKey(KEY))
        assert ApiKey(KEY) != ApiKey(KEY + "x")
        assert ApiKey(KEY) != KEY

    @pytest.mark.parametrize("value", ["", "   ", "\n", "sk key", "sk\nkey", "sk\x00key"])
    def test_empty_or_unsendable_keys_are_refused(self, value: str) -> None:
        """Empty, whitespace-only or header-breaking keys are a ConfigError (exit 2)."""
        with pytest.raises(ConfigError) as info:
            ApiKey(value)
        assert info.value.exit_code == 2

    def test_config_repr_hides_the_key(self) -> None:
        """A config's repr and str show the masked key only."""
        config = ApiConfig(api_key=ApiKey(KEY))
        assert KEY not in repr(config) + str(config)
        assert "ApiKey('***')" in repr(config)


class TestLoadApiKey:
    def test_from_environment(self) -> None:
        """PHOTOGPT_API_KEY is used, stripped."""
        assert load_api_key({"PHOTOGPT_API_KEY": f"  {KEY}\n"}).reveal() == KEY

    def test_empty_environment_value_is_an_error(self) -> None:
        """A set-but-empty variable is reported as such, not as 'missing'."""
        with pytest.raises(ConfigError, match="PHOTOGPT_API_KEY is set but empty"):
            load_api_key({"PHOTOGPT_API_KEY": "  "})

    def test_missing_key_names_both_ways_to_give_it(self) -> None:
        """With nothing set, the message says how to set the variable or the file."""
        with pytest.raises(ConfigError) as info:
            load_api_key({})
        assert "PHOTOGPT_API_KEY" in str(info.value)
        assert "PHOTOGPT_API_KEY_FILE" in str(info.value)
        assert "chmod 600" in str(info.value)

    def test_private_key_file_is_read_first_line_stripped(self, tmp_path: Path) -> None:
        """A 0600 file works; only its first line counts."""
        path = _key_file(tmp_path, f"  {KEY}  \nsecond line\n", 0o600)
        assert load_api_key({}, key_file=path).reveal() == KEY

    def test_key_file_from_environment(self, tmp_path: Path) -> None:
        """PHOTOGPT_API_KEY_FILE points at the file."""
        path = _key_file(tmp_path, KEY, 0o600)
        assert load_api_key({"PHOTOGPT_API_KEY_FILE": str(path)}).reveal() == KEY

    def test_explicit_key_file_wins_over_environment(self, tmp_path: Path) -> None:
        """An explicit key file (a CLI flag) beats PHOTOGPT_API_KEY."""
        path = _key_file(tmp_path, KEY, 0o400)
        assert load_api_key({"PHOTOGPT_API_KEY": "sk-other-1234"}, key_file=path).reveal() == KEY

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
    def test_group_or_other_readable_file_is_refused(self, tmp_path: Path, mode: int) -> None:
        """Like ssh: the message names the path and says chmod 600, and never shows the key."""
        path = _key_file(tmp_path, KEY, mode)
        with pytest.raises(ConfigError) as info:
            load_api_key({}, key_file=path)
        text = str(info.value)
        assert str(path) in text and "chmod 600" in text
        assert KEY not in text

    def test_missing_file_names_the_path(self, tmp_path: Path) -> None:
        """A key file that does not exist is a ConfigError naming it."""
        path = tmp_path / "absent.key"
        with pytest.raises(ConfigError, match=r"absent\.key"):
            load_api_key({"PHOTOGPT_API_KEY_FILE": str(path)})

    def test_empty_file_is_refused(self, tmp_path: Path) -> None:
        """An empty first line is not a key."""
        with pytest.raises(ConfigError, match="first line is empty"):
            load_api_key({}, key_file=_key_file(tmp_path, "\nsk-on-line-two\n", 0o600))


class TestApiConfig:
    @pytest.mark.parametrize(
        ("given", "stored"),
        [
            ("https://developer.photogptai.com/api", "https://developer.photogptai.com/api"),
            ("https://developer.photogptai.com/api/", "https://developer.photogptai.com/api"),
            ("HTTPS://example.com:8443/v/api//", "https://example.com:8443/v/api"),
            ("http://127.0.0.1:8787/api", "http://127.0.0.1:8787/api"),
            ("http://127.9.9.9/api", "http://127.9.9.9/api"),
            ("http://localhost:8787/api/", "http://localhost:8787/api"),
            ("http://[::1]:8787/api", "http://[::1]:8787/api"),
        ],
    )
    def test_accepted_base_urls_are_normalised(self, given: str, stored: str) -> None:
        """https anywhere, http on loopback only; trailing slashes dropped."""
        assert ApiConfig(base_url=given, api_key=ApiKey(KEY)).base_url == stored

    @pytest.mark.parametrize(
        "url",
        [
            "http://developer.photogptai.com/api",
            "http://10.0.0.5/api",
            "http://0.0.0.0:8787/api",
            "http://127.0.0.1.evil.example/api",
            "ftp://example.com/api",
            "https:///api",
            "developer.photogptai.com/api",
            "https://user:pw@example.com/api",
            "https://user@example.com/api",
            "https://example.com/api?x=1",
            "https://example.com/api#frag",
            "https://example.com:99999/api",
            "https://exa mple.com/api",
            "",
        ],
    )
    def test_unsafe_or_malformed_base_urls_are_refused(self, url: str) -> None:
        """Plain http off loopback, user info, query, fragment, bad ports: ConfigError."""
        with pytest.raises(ConfigError):
            ApiConfig(base_url=url, api_key=ApiKey(KEY))

    def test_defaults(self) -> None:
        """The documented defaults, and a user agent that is not a library default."""
        config = ApiConfig(api_key=ApiKey(KEY))
        assert config.base_url == DEFAULT_BASE_URL
        assert (config.api_version, config.timeout_s, config.connect_timeout_s) == ("1", 120.0, 10.0)
        assert config.max_response_bytes == 4 * 1024 * 1024
        assert config.max_connections == 100
        assert config.user_agent.startswith("photogpt-pipeline/") and "aiohttp" in config.user_agent

    @pytest.mark.parametrize(
        "bad",
        [
            {"timeout_s": 0},
            {"connect_timeout_s": -1},
            {"max_response_bytes": 0},
            {"max_connections": 0},
            {"api_version": " "},
            {"user_agent": ""},
        ],
    )
    def test_impossible_values_are_refused(self, bad: dict[str, object]) -> None:
        """Non-positive limits and empty header values fail at construction."""
        with pytest.raises(ConfigError):
            ApiConfig(api_key=ApiKey(KEY), **bad)  # type: ignore[arg-type]

    def test_a_plain_string_key_is_refused(self) -> None:
        """The key must be wrapped, or its repr would leak it."""
        with pytest.raises(ConfigError):
            ApiConfig(api_key=KEY)  # type: ignore[arg-type]

    def test_is_frozen_and_keyword_only(self) -> None:
        """Configs are values: no positional construction, no mutation."""
        config = ApiConfig(api_key=ApiKey(KEY))
        with pytest.raises(FrozenInstanceError):
            config.base_url = "https://elsewhere.example/api"  # type: ignore[misc]
        with pytest.raises(TypeError):
            ApiConfig(DEFAULT_BASE_URL, ApiKey(KEY))  # type: ignore[call-arg]

    def test_from_env(self, tmp_path: Path) -> None:
        """from_env reads PHOTOGPT_BASE_URL and the key; an empty URL variable means the default."""
        config = ApiConfig.from_env({"PHOTOGPT_BASE_URL": "http://127.0.0.1:9/api/", "PHOTOGPT_API_KEY": KEY})
        assert config.base_url == "http://127.0.0.1:9/api"
        assert config.api_key == ApiKey(KEY)
        path = _key_file(tmp_path, KEY, 0o600)
        assert ApiConfig.from_env({"PHOTOGPT_BASE_URL": ""}, key_file=path).base_url == DEFAULT_BASE_URL

    def test_from_env_refuses_an_http_base_url_before_connecting(self) -> None:
        """An unsafe PHOTOGPT_BASE_URL is a ConfigError from from_env itself."""
        with pytest.raises(ConfigError, match="https"):
            ApiConfig.from_env({"PHOTOGPT_BASE_URL": "http://api.example.com/api", "PHOTOGPT_API_KEY": KEY})
