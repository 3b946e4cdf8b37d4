"""Build the sender for a configured destination (the only place that knows every kind)."""

from __future__ import annotations

import os

from gateway.config import Destination, DicomwebDestination, DimseDestination, S3Destination
from gateway.exceptions import ConfigError
from gateway.forward.base import Sender


def make_sender(destination: Destination, *, calling_ae_title: str) -> Sender:
    """A sender for `destination`; senders import their wire libraries lazily."""
    if isinstance(destination, DicomwebDestination):
        from gateway.auth.outbound import make_outbound_credentials
        from gateway.forward.stowrs import StowRsSender

        credentials = (
            None
            if destination.auth is None
            else make_outbound_credentials(
                destination.auth, destination=destination.name, verify=destination.verify
            )
        )
        return StowRsSender(
            name=destination.name,
            url=destination.url,
            timeout=destination.timeout,
            max_batch_bytes=destination.max_batch_bytes,
            verify=destination.verify,
            auth=credentials.headers if credentials else None,
            on_unauthorized=credentials.invalidate if credentials else None,
        )
    if isinstance(destination, DimseDestination):
        from gateway.dimse.ae import client_ssl_context
        from gateway.forward.cstore import CStoreSender

        return CStoreSender(
            name=destination.name,
            ae_title=destination.ae_title,
            host=destination.host,
            port=destination.port,
            calling_ae_title=destination.calling_ae_title or calling_ae_title,
            acse_timeout=destination.acse_timeout,
            dimse_timeout=destination.dimse_timeout,
            network_timeout=destination.network_timeout,
            ssl_context=(
                client_ssl_context(destination.tls, f"destinations.{destination.name}.tls")
                if destination.tls
                else None
            ),
        )
    if isinstance(destination, S3Destination):
        return _s3_sender(destination)
    raise TypeError(f"unknown destination kind {type(destination).__name__}")


def _s3_sender(destination: S3Destination) -> Sender:
    """An S3Sender; credentials from the named variables, read now, else the AWS chain."""
    from functools import partial

    key = f"destinations.{destination.name}"
    try:
        from gateway.forward.s3 import S3Sender
        from gateway.s3client import make_client
    except ImportError as exc:
        raise ConfigError(
            f"{key} is an s3 destination but the S3 backend is not installed; "
            "run: pip install 'dicom-gateway[s3]'"
        ) from exc

    secrets: dict[str, str] = {}
    for option, argument in (
        ("access_key_id_env", "access_key_id"),
        ("secret_access_key_env", "secret_access_key"),
        ("session_token_env", "session_token"),
    ):
        env_name = getattr(destination, option)
        if env_name is None:
            continue
        value = os.environ.get(env_name)
        if not value:
            raise ConfigError(f"{key}.{option} names {env_name}, which is not set; set it")
        secrets[argument] = value
    hint = (
        f"the variables {destination.access_key_id_env} and {destination.secret_access_key_env}"
        if destination.access_key_id_env
        else "the AWS credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
        "or the instance or task role)"
    )
    return S3Sender(
        name=destination.name,
        location=destination.location,
        key_template=destination.key_template,
        storage_class=destination.storage_class,
        credentials_hint=hint,
        client_factory=partial(
            make_client,
            endpoint_url=destination.endpoint_url,
            region=destination.region,
            connect_timeout=min(destination.timeout, 10.0),
            read_timeout=destination.timeout,
            max_pool_connections=16,
            access_key_id=secrets.get("access_key_id"),
            secret_access_key=secrets.get("secret_access_key"),
            session_token=secrets.get("session_token"),
        ),
    )
