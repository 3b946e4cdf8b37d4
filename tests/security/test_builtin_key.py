"""The built-in issuer's signing key is made on first use and shared through its file: the
server (verifying) and `dicom-gateway token` (issuing) may each come first."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from gateway.auth.builtin import BuiltinIssuer
from gateway.auth.factory import OnFirstToken
from gateway.auth.principal import Principal
from gateway.exceptions import ConfigError

ISSUER = "urn:dicom-gateway:GATEWAY"


def test_the_key_is_made_on_first_use_and_read_by_an_issuer_made_earlier(tmp_path: Path) -> None:
    key_file = tmp_path / "auth" / "key.json"
    server = BuiltinIssuer(key_file, issuer=ISSUER)  # started before any key existed
    cli = BuiltinIssuer(key_file, issuer=ISSUER)
    assert not key_file.exists()
    token = cli.issue("viewer", ["dicomweb.read"])
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in key_file.parent.iterdir()] == ["key.json"], "no partial file left"
    principal = server.verifier().verify(token)
    assert principal.subject == "viewer" and principal.scopes == {"dicomweb.read"}


def test_a_key_another_process_created_meanwhile_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from joserfc.jwk import ECKey

    key_file = tmp_path / "key.json"
    other, ours = BuiltinIssuer(key_file, issuer=ISSUER), BuiltinIssuer(key_file, issuer=ISSUER)
    generate = ECKey.generate_key
    other_tokens: list[str] = []

    def racing(*args: object, **kwargs: object) -> object:
        key = generate(*args, **kwargs)  # type: ignore[arg-type]
        if not other_tokens:  # while we generate ours, the other process makes and uses its key
            other_tokens.append("")
            other_tokens[0] = other.issue("other", [])
        return key

    monkeypatch.setattr(ECKey, "generate_key", racing)
    our_token = ours.issue("ours", [])
    on_disk = BuiltinIssuer(key_file, issuer=ISSUER).verifier()
    assert on_disk.verify(other_tokens[0]).subject == "other", "the first key stays"
    assert on_disk.verify(our_token).subject == "ours", "we signed with the key on disk"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.json"]


def test_a_broken_key_file_is_a_start_up_error(tmp_path: Path) -> None:
    key_file = tmp_path / "key.json"
    key_file.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the built-in signing key"):
        BuiltinIssuer(key_file, issuer=ISSUER)


def test_the_verifier_is_built_once_on_the_first_token() -> None:
    built: list[int] = []
    started = threading.Barrier(8)

    class Verifier:
        def verify(self, token: str) -> Principal:
            return Principal(subject=token, scopes=frozenset())

    def build() -> Verifier:
        built.append(1)
        return Verifier()

    verifier = OnFirstToken(build)
    assert built == []
    subjects: list[str] = []

    def call(index: int) -> None:
        started.wait()
        subjects.append(verifier.verify(f"t{index}").subject)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert built == [1] and sorted(subjects) == [f"t{i}" for i in range(8)]
