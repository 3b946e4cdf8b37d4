"""DICOM JSON headers of stored instances, made from the spool the first time one is read.

Why not at ingest: turning a whole header into DICOM JSON cost more CPU than everything else
ingest does, and most instances are forwarded and never queried. Ingest stores HEADER_PENDING;
the first QIDO-RS result or WADO-RS metadata answer that needs a header reads the stored bytes
up to the pixel data, makes the same document ingest used to make, and saves it in the row, so
later reads cost a database read only. The stored bytes are the received bytes, so the answer
does not depend on when the header was made.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gateway.db import Database
from gateway.db.engine import Row
from gateway.db.instances import HEADER_PENDING
from gateway.dicom.attributes import header_json
from gateway.dicom.header import read_dataset
from gateway.exceptions import StoreError
from gateway.spool import Spool

log = logging.getLogger(__name__)


def with_headers(db: Database, spool: Spool, rows: Sequence[Row]) -> None:
    """Give every row (with `header_json`, `id`, `spool_key`) its header, in place.

    Headers still pending are made from the spool and saved; a header that cannot be made now
    (bytes purged or unreadable) stays pending and the row answers with an empty header.
    """
    made: list[tuple[str, int, str, str]] = []
    for row in rows:
        if row.get("header_json") != HEADER_PENDING:
            continue
        key = row.get("spool_key")
        if not key or row.get("purged_at") is not None:
            continue
        try:
            with spool.open(str(key)) as stream:
                document = header_json(read_dataset(stream))
        except Exception as exc:  # spool errors and undecodable data alike: answer without it
            log.warning("cannot make the header of %s from the spool: %s", key, exc)
            continue
        row["header_json"] = document
        made.append((document, int(row["id"]), str(key), HEADER_PENDING))
    if not made:
        return
    try:
        with db.transaction() as cur:
            # Only if the row still names these bytes: a replacement has its own header.
            cur.executemany(
                "UPDATE instances SET header_json = ? "
                "WHERE id = ? AND spool_key = ? AND header_json = ?",
                made,
            )
    except StoreError as exc:
        log.warning("could not save %d header(s); they will be made again: %s", len(made), exc)
