"""Config errors name the key and the fix; relative paths follow the config file."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_settings, parse_settings
from gateway.exceptions import ConfigError


def test_example_config_is_valid() -> None:
    settings = load_settings(Path(__file__).parents[2] / "examples" / "gateway.yaml")
    assert settings.node.ae_title == "GATEWAY"
    assert settings.storage.spool.startswith("file:///") and "examples/data/spool" in (
        settings.storage.spool
    )
    assert settings.routing_default is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"node": {"ae_title": "A" * 17}}, "node.ae_title"),
        ({"nodes": {}}, "unknown key(s) nodes"),
        ({"storage": {"spool": "ftp://x"}}, "use file://PATH or s3://"),
        ({"storage": {"database": "mysql://x"}}, "sqlite:///PATH"),
        ({"destinations": {"cloud": {"type": "dicomweb"}}}, "destinations.cloud.url is required"),
        ({"destinations": {"cloud": {"type": "ftp"}}}, "use dicomweb"),
        (
            {"destinations": {"cloud": {"type": "dicomweb", "url": "ftp://x"}}},
            "destinations.cloud.url",
        ),
        (
            {"destinations": {"p": {"type": "dimse", "ae_title": "P", "host": "h", "port": 0}}},
            "destinations.p.port is 0",
        ),
        ({"dimse": {"max_associations": "many"}}, "dimse.max_associations must be a number"),
        (
            {"dimse": {"allowed_callers": [{"ae_title": "CT\\1"}]}},
            "dimse.allowed_callers[0].ae_title",
        ),
        ({"ingest": {"duplicate_policy": "merge"}}, "overwrite, ignore, reject"),
        ({"routes": [{"name": "r", "forward": ["nowhere"]}]}, "nowhere"),
    ],
)
def test_errors_name_the_key(raw: dict[str, object], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(raw, base_dir=tmp_path)
    assert message in str(info.value)


def test_environment_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(
        'node: {ae_title: "${GW_AE:-FALLBACK}"}\nstorage: {spool: "file://${GW_SPOOL}"}\n'
    )
    with pytest.raises(ConfigError, match="GW_SPOOL"):
        load_settings(config)
    monkeypatch.setenv("GW_SPOOL", "/var/spool/gw")
    settings = load_settings(config)
    assert settings.node.ae_title == "FALLBACK"
    assert settings.storage.spool == "file:///var/spool/gw"


def test_relative_paths_follow_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    config = tmp_path / "etc" / "gw.yaml"
    config.write_text('storage: {spool: "file://./spool", database: "sqlite:///db/gw.db"}\n')
    settings = load_settings(config)
    assert settings.storage.spool == f"file://{tmp_path / 'etc' / 'spool'}"
    assert settings.storage.database == f"sqlite:///{tmp_path / 'etc' / 'db' / 'gw.db'}"


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("node: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


def test_query_retrieve_settings(tmp_path: Path) -> None:
    settings = parse_settings(
        {
            "dimse": {
                "max_find_results": 50,
                "move_destinations": {"WS1": {"host": "10.0.0.20", "port": 104}},
            }
        },
        base_dir=tmp_path,
    )
    assert settings.dimse.max_find_results == 50
    [(title, target)] = settings.dimse.move_destinations.items()
    assert (title, target.host, target.port, target.tls) == ("WS1", "10.0.0.20", 104, None)
    assert parse_settings({}, base_dir=tmp_path).dimse.move_destinations == {}
    with pytest.raises(ConfigError, match=r"dimse.move_destinations.WS1.port is required"):
        parse_settings({"dimse": {"move_destinations": {"WS1": {"host": "h"}}}}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"dimse.move_destinations.WS1: unknown key\(s\) ae"):
        parse_settings(
            {"dimse": {"move_destinations": {"WS1": {"host": "h", "port": 1, "ae": "X"}}}},
            base_dir=tmp_path,
        )
    with pytest.raises(ConfigError, match=r"dimse.move_destinations.A\\B"):
        parse_settings(
            {"dimse": {"move_destinations": {"A\\B": {"host": "h", "port": 1}}}}, base_dir=tmp_path
        )
