"""`type: s3` destinations: what the config accepts, what it refuses and how the error reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import S3Destination, parse_settings
from gateway.exceptions import ConfigError
from gateway.forward.factory import make_sender
from gateway.forward.s3 import S3Sender
from gateway.s3keys import render_key


def destination(**entry: Any) -> S3Destination:
    raw = {"destinations": {"lake": {"type": "s3", "url": "s3://research-lake/incoming", **entry}}}
    parsed = parse_settings(raw, base_dir=Path("/"))
    result = parsed.destinations["lake"]
    assert isinstance(result, S3Destination)
    return result


def test_defaults() -> None:
    lake = destination()
    assert (lake.location.bucket, lake.location.prefix) == ("research-lake", "incoming")
    assert lake.key_template == "{study}/{series}/{sop}.dcm"
    assert (lake.endpoint_url, lake.region, lake.storage_class) == (None, None, None)
    assert lake.access_key_id_env is None and not lake.location.sse_kms
    assert lake.max_batch_instances == 100 and lake.retry.max_attempts == 20


def test_every_option() -> None:
    lake = destination(
        url="s3://research-lake/in?sse_kms_key_id=alias/lake&part_size_mb=32",
        endpoint_url="https://s3.eu-west-1.amazonaws.com",
        region="eu-west-1",
        key_template="ct/study={study}/{series}/{sop}",
        storage_class="INTELLIGENT_TIERING",
        access_key_id_env="LAKE_KEY",
        secret_access_key_env="LAKE_SECRET",
        session_token_env="LAKE_TOKEN",
        workers=4,
        timeout=30,
        retry={"max_attempts": 5},
    )
    assert lake.location.sse_kms_key_id == "alias/lake"
    assert lake.location.part_size == 32 << 20
    assert (lake.region, lake.storage_class, lake.workers) == (
        "eu-west-1",
        "INTELLIGENT_TIERING",
        4,
    )
    assert (lake.access_key_id_env, lake.session_token_env) == ("LAKE_KEY", "LAKE_TOKEN")
    assert lake.retry.max_attempts == 5


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"url": "https://bucket"}, "destinations.lake.url is 'https://bucket'; use s3://"),
        ({"url": "s3://Bad_Bucket/x"}, "destinations.lake.url: 'Bad_Bucket' is not a valid"),
        ({"url": "s3://ok-bucket/x?sse=AES256"}, "destinations.lake.url: sse is 'AES256'"),
        ({"endpoint_url": "s3.example:9000"}, "destinations.lake.endpoint_url"),
        ({"region": "EU West"}, "destinations.lake.region"),
        ({"storage_class": "COLD"}, "destinations.lake.storage_class is 'COLD'; use one of"),
        ({"key_template": "{study}/{series}.dcm"}, "must contain {sop}"),
        ({"key_template": "{patient_name}/{sop}"}, "{patient_name} is not a placeholder"),
        ({"key_template": "{sop!r}"}, "is not a placeholder"),
        ({"key_template": "{sop:>70}"}, "is not a placeholder"),
        ({"key_template": "a b/{sop}"}, "may use only letters, digits"),
        ({"key_template": "/{study}/{sop}"}, "must not start with '/'"),
        ({"key_template": "{study}//{sop}"}, "empty, '.' or '..' segment"),
        ({"key_template": "../{sop}"}, "'..' segment"),
        ({"key_template": "{sop"}, "write placeholders as"),
        ({"access_key_id_env": "KEY"}, "give both access_key_id_env and secret_access_key_env"),
        (
            {"access_key_id_env": "AKIAXXXX=secret", "secret_access_key_env": "S"},
            "give the NAME of an environment variable",
        ),
        ({"session_token_env": "TOKEN"}, "session_token_env needs access_key_id_env"),
        ({"bucket": "x"}, "destinations.lake: unknown key(s) bucket"),
    ],
)
def test_errors_name_the_key_and_the_fix(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        destination(**entry)
    assert message in str(info.value)


def test_unknown_type_lists_s3() -> None:
    with pytest.raises(ConfigError, match=r"or s3 \(bucket\)"):
        parse_settings({"destinations": {"x": {"type": "ftp"}}}, base_dir=Path("/"))


def test_keys_are_filled_with_uids_only() -> None:
    template = "{sop_class}/{study}/{series}/{sop}.dcm"
    assert render_key(template, study="1.2", series="1.2.3", sop="1.2.3.4", sop_class="1.9") == (
        "1.9/1.2/1.2.3/1.2.3.4.dcm"
    )
    assert render_key(template, study="1.2", series="../..", sop="1.2.3.4", sop_class="1.9") == (
        "series",
        "../..",
    )
    # A placeholder the template does not use is not checked (it names nothing).
    assert render_key("{sop}", study="x", series="y", sop="1.2", sop_class="z") == "1.2"


def test_factory_builds_an_s3_sender_and_reads_the_named_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lake = destination(access_key_id_env="LAKE_KEY", secret_access_key_env="LAKE_SECRET")
    monkeypatch.delenv("LAKE_SECRET", raising=False)
    monkeypatch.setenv("LAKE_KEY", "key")
    with pytest.raises(ConfigError, match=r"destinations\.lake\.secret_access_key_env names "):
        make_sender(lake, calling_ae_title="GATEWAY")
    monkeypatch.setenv("LAKE_SECRET", "secret")
    sender = make_sender(lake, calling_ae_title="GATEWAY")
    assert isinstance(sender, S3Sender) and sender.name == "lake"
    sender.close()


def test_the_documented_example_validates() -> None:
    import re

    import yaml

    text = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    match = re.search(r"## Full example\n\n```yaml\n(.*?)```", text, re.S)
    assert match is not None
    settings = parse_settings(yaml.safe_load(match.group(1)), base_dir=Path("/"))
    lake = settings.destinations["lake"]
    assert isinstance(lake, S3Destination) and lake.location.sse_kms_key_id == "alias/lake"
