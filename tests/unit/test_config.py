"""Config files for ``fastws serve --config``: what is accepted, and errors that name the key."""

from __future__ import annotations

import pytest

from fastws.config import ConfigError, load_config, parse_config


def test_full_config(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('''
app = "examples.guarded:app"
[server]
host = "127.0.0.1"
port = 9001
ping_interval = 0
idle_timeout = 50
max_size = 4096
subprotocols = ["chat"]
[guards]
origins = ["https://example.com"]
trusted_proxies = ["10.0.0.0/8", "::1"]
connection_rate = { rate = "10/60s", ban = 30 }
message_rate = "100/s"
max_connections = 10
queue_timeout = 2.5
[guards.firewall]
default = "deny"
[[guards.firewall.rules]]
action = "allow"
ip = "127.0.0.0/8"
''')
    cfg = load_config(str(f))
    assert cfg.app == "examples.guarded:app"
    assert cfg.server == {"host": "127.0.0.1", "port": 9001, "ping_interval": None, "idle_timeout": 50,
                          "max_size": 4096, "subprotocols": ["chat"]}
    assert cfg.guards["connection_rate"] == {"rate": "10/60s", "ban": 30}
    assert cfg.guards["firewall"]["default"] == "deny"


@pytest.mark.parametrize("data,message", [
    ({"guards": {"max_connections": True}}, "guards.max_connections must be a positive integer"),
    ({"guards": {"origins": "https://x"}}, "guards.origins must be a list of origins"),
    ({"guards": {"origins": ["nope"]}}, "guards.origins: invalid origin 'nope'"),
    ({"guards": {"trusted_proxies": ["10.0.0.0/33"]}}, "guards.trusted_proxies: invalid trusted proxy"),
    ({"guards": {"message_rate": {"count": 5, "actoin": "drop"}}}, "guards.message_rate: unknown rate limit key"),
    ({"server": {"ssl_certfile": "c.pem"}}, "go together"),
    ({"server": {"ping_interval": -1}}, "server.ping_interval must be a number of seconds"),
    ({"server": {"transport": "carrier pigeon"}}, "server.transport must be auto, socket"),
    ({"app": 5}, "app must be a string"),
    ({"server": []}, "[server] must be a table"),
])
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        parse_config(data, "x.toml")
    assert str(info.value).startswith("x.toml: ")
    assert message in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "absent.toml"))
