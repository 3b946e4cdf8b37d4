"""Durable byte storage for received instances, behind one small protocol."""

from __future__ import annotations

from gateway.exceptions import ConfigError
from gateway.spool.base import Spool, StoredObject, spool_key

__all__ = ["Spool", "StoredObject", "open_spool", "spool_key"]


def open_spool(url: str) -> Spool:
    """Create the spool named by a `file://` or `s3://` URL (backends import lazily)."""
    if url.startswith("file://"):
        from gateway.spool.filesystem import FilesystemSpool

        return FilesystemSpool(url[len("file://") :])
    if url.startswith("s3://"):
        try:
            from gateway.spool.s3 import S3Spool  # type: ignore[import-not-found, unused-ignore]
        except ImportError as exc:
            raise ConfigError(
                "storage.spool is s3:// but the S3 backend is not installed; "
                "run: pip install 'dicom-gateway[s3]'"
            ) from exc
        return S3Spool(url)  # type: ignore[no-any-return, unused-ignore]
    raise ConfigError(f"storage.spool {url!r}: use file://PATH or s3://BUCKET/PREFIX")
