"""Settings from flags, the environment and .env: every documented form works."""

import pytest

from lorif_serve.errors import ConfigError
from lorif_serve.server.cli_settings import settings_from_cli
from lorif_serve.server.coordinator.settings import CoordinatorSettings
from lorif_serve.server.settings import ServerSettings


def keys(settings):
    return [key.get_secret_value() for key in settings.api_keys]


@pytest.mark.parametrize("value", ["k1,k2", " k1 , k2 ", '["k1", "k2"]'])
def test_api_keys_from_the_environment(monkeypatch, value):
    monkeypatch.setenv("LORIF_API_KEYS", value)
    assert keys(ServerSettings(index="x.h5")) == ["k1", "k2"]
    monkeypatch.setenv("LORIF_COORDINATOR_API_KEYS", value)
    assert keys(CoordinatorSettings(shards=["http://a"])) == ["k1", "k2"]


def test_one_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("LORIF_API_KEYS", "only")
    assert keys(ServerSettings(index="x.h5")) == ["only"]


def test_api_keys_from_a_dotenv_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("LORIF_API_KEYS=k1,k2\nLORIF_COORDINATOR_API_KEYS=c1\n")
    assert keys(ServerSettings(index="x.h5", _env_file=env_file)) == ["k1", "k2"]
    assert keys(CoordinatorSettings(shards=["http://a"], _env_file=env_file)) == ["c1"]


def test_api_keys_from_flags():
    repeated = settings_from_cli(
        ServerSettings, ["--index", "x", "--api-keys", "a", "--api-keys", "b"]
    )
    assert keys(repeated) == ["a", "b"]
    listed = settings_from_cli(ServerSettings, ["--index", "x", "--api-keys", "a,b"])
    assert keys(listed) == ["a", "b"]
    coordinator = settings_from_cli(
        CoordinatorSettings, ["--shards", "http://a", "--api-keys", "c1", "--shard-api-key", "s"]
    )
    assert keys(coordinator) == ["c1"] and coordinator.shard_api_key.get_secret_value() == "s"


def test_every_server_setting_has_a_flag_with_help(capsys):
    with pytest.raises(SystemExit):
        settings_from_cli(ServerSettings, ["--help"])
    text = capsys.readouterr().out
    for name, field in ServerSettings.model_fields.items():
        assert "--" + name.replace("_", "-") in text, name
        assert field.description, name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--index (or LORIF_INDEX) is required"),
        (["--index", "x", "--port", "99999"], "--port (or LORIF_PORT): Input should be less"),
        (["--index", "x", "--residency", "moon"], "--residency (or LORIF_RESIDENCY)"),
    ],
)
def test_bad_settings_are_one_clear_line(argv, message):
    with pytest.raises(ConfigError) as caught:
        settings_from_cli(ServerSettings, argv)
    assert message in str(caught.value)
    assert "errors.pydantic.dev" not in str(caught.value)


@pytest.mark.parametrize("module", ["server", "server.coordinator"])
def test_a_taken_port_is_one_line_before_anything_loads(index_path, module):
    """Bound first: the server says so in milliseconds instead of after loading the model."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        target = ["--index", str(index_path)] if module == "server" else ["--shards", "http://a"]
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", module, *target, "--port", str(port), "--model", "/nowhere"]
            if module == "server"
            else [sys.executable, "-m", module, *target, "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in done.stderr
    assert "Traceback" not in done.stderr and time.monotonic() - began < 30
