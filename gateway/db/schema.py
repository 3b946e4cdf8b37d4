"""Schema migrations, written once in SQL that SQLite and PostgreSQL both accept.

`{pk}` is replaced by the dialect's auto-increment primary key. Times are epoch seconds (REAL /
DOUBLE PRECISION) so ordering and arithmetic are the same on both backends.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE instances (
        id {pk},
        sop_instance_uid TEXT NOT NULL UNIQUE,
        sop_class_uid TEXT NOT NULL,
        study_instance_uid TEXT NOT NULL,
        series_instance_uid TEXT NOT NULL,
        transfer_syntax_uid TEXT NOT NULL,
        patient_id TEXT,
        patient_name TEXT,
        patient_birth_date TEXT,
        patient_sex TEXT,
        study_date TEXT,
        study_time TEXT,
        study_id TEXT,
        study_description TEXT,
        accession_number TEXT,
        referring_physician_name TEXT,
        modality TEXT,
        series_number INTEGER,
        series_description TEXT,
        performed_procedure_step_start_date TEXT,
        performed_procedure_step_start_time TEXT,
        instance_number INTEGER,
        rows INTEGER,
        columns INTEGER,
        bits_allocated INTEGER,
        number_of_frames INTEGER,
        specific_character_set TEXT,
        header_json TEXT NOT NULL,
        spool_key TEXT,
        size BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        version INTEGER NOT NULL DEFAULT 1,
        source TEXT NOT NULL,
        calling_ae TEXT,
        called_ae TEXT,
        peer TEXT,
        received_at DOUBLE PRECISION NOT NULL,
        decision TEXT NOT NULL,
        trace_context TEXT,
        duplicates INTEGER NOT NULL DEFAULT 0,
        purged_at DOUBLE PRECISION
    );
    CREATE INDEX instances_study ON instances (study_instance_uid);
    CREATE INDEX instances_received ON instances (received_at);
    CREATE INDEX instances_series ON instances (series_instance_uid);
    CREATE INDEX instances_patient_id ON instances (patient_id);
    CREATE INDEX instances_patient_name ON instances (patient_name);
    CREATE INDEX instances_study_date ON instances (study_date);
    CREATE INDEX instances_accession ON instances (accession_number);
    CREATE INDEX instances_modality ON instances (modality);
    CREATE TABLE deliveries (
        id {pk},
        instance_id BIGINT NOT NULL REFERENCES instances (id),
        study_instance_uid TEXT NOT NULL,
        destination TEXT NOT NULL,
        rule TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        lease_owner TEXT,
        lease_expires_at DOUBLE PRECISION,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        settled_at DOUBLE PRECISION,
        last_status TEXT,
        last_detail TEXT,
        warning INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX deliveries_due ON deliveries (destination, state, next_attempt_at);
    CREATE INDEX deliveries_instance ON deliveries (instance_id);
    CREATE INDEX deliveries_study ON deliveries (study_instance_uid);
    CREATE TABLE delivery_attempts (
        id {pk},
        delivery_id BIGINT NOT NULL REFERENCES deliveries (id),
        attempt INTEGER NOT NULL,
        worker TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        finished_at DOUBLE PRECISION NOT NULL,
        outcome TEXT NOT NULL,
        status TEXT,
        detail TEXT
    );
    CREATE INDEX delivery_attempts_delivery ON delivery_attempts (delivery_id);
    CREATE TABLE events (
        id {pk},
        at DOUBLE PRECISION NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT,
        study_instance_uid TEXT,
        sop_instance_uid TEXT,
        outcome TEXT NOT NULL,
        detail TEXT
    );
    CREATE INDEX events_study ON events (study_instance_uid);
    CREATE INDEX events_actor ON events (actor);
    CREATE TABLE spool_garbage (
        spool_key TEXT PRIMARY KEY,
        delete_after DOUBLE PRECISION NOT NULL
    );
    """,
    # 2: QIDO-RS fuzzy person-name matching (gateway/dicom/names.py) and series-level lookups.
    """
    ALTER TABLE instances ADD COLUMN patient_name_search TEXT;
    ALTER TABLE instances ADD COLUMN referring_physician_name_search TEXT;
    UPDATE instances SET patient_name_search =
        ' ' || UPPER(REPLACE(REPLACE(patient_name, '^', ' '), '=', ' ')) || ' '
        WHERE patient_name IS NOT NULL;
    UPDATE instances SET referring_physician_name_search =
        ' ' || UPPER(REPLACE(REPLACE(referring_physician_name, '^', ' '), '=', ' ')) || ' '
        WHERE referring_physician_name IS NOT NULL;
    CREATE INDEX instances_series_study ON instances (study_instance_uid, series_instance_uid);
    CREATE INDEX instances_accession_study ON instances (accession_number, study_instance_uid)
    """,
    # 3: indexes that migration 2's composites begin with cost every ingest an index write
    # (~20 % of the insert) and serve no query the composites do not.
    """
    DROP INDEX IF EXISTS instances_study;
    DROP INDEX IF EXISTS instances_accession
    """,
    # 4: Storage Commitment Push Model transactions (gateway/db/commitments.py): persisted
    # before N-ACTION-RSP, reported by N-EVENT-REPORT; `items` and `result` are JSON.
    """
    CREATE TABLE commitments (
        id {pk},
        transaction_uid TEXT NOT NULL UNIQUE,
        calling_ae TEXT NOT NULL,
        called_ae TEXT NOT NULL,
        peer TEXT,
        items TEXT NOT NULL,
        item_count INTEGER NOT NULL,
        requested_at DOUBLE PRECISION NOT NULL,
        deadline_at DOUBLE PRECISION NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at DOUBLE PRECISION NOT NULL,
        lease_owner TEXT,
        lease_expires_at DOUBLE PRECISION,
        event_type INTEGER,
        result TEXT,
        committed_count INTEGER,
        failed_count INTEGER,
        decided_at DOUBLE PRECISION,
        reported_at DOUBLE PRECISION,
        last_detail TEXT,
        updated_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX commitments_due ON commitments (state, next_attempt_at);
    CREATE INDEX commitments_requested ON commitments (requested_at)
    """,
    # 5: destination health (the circuit breaker, shared by every replica) and failover:
    # `origin_id` links a failed-over delivery's replacement to it, `note` says why.
    """
    CREATE TABLE destination_health (
        destination TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        since DOUBLE PRECISION NOT NULL,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        last_error_at DOUBLE PRECISION,
        last_success_at DOUBLE PRECISION,
        next_probe_at DOUBLE PRECISION,
        updated_at DOUBLE PRECISION NOT NULL
    );
    ALTER TABLE deliveries ADD COLUMN origin_id BIGINT;
    ALTER TABLE deliveries ADD COLUMN note TEXT
    """,
    # 6: storage commitment in `trace STUDY_UID` and in traces. `commitment_items` lists each
    # transaction's instances (its `items` JSON, indexed: which transactions name an instance);
    # `trace_context` is the N-ACTION span's traceparent, the parent of every report attempt's
    # span. Transactions recorded before this migration keep working but are not listed per
    # instance (the feature was unreleased until then).
    """
    ALTER TABLE commitments ADD COLUMN trace_context TEXT;
    CREATE TABLE commitment_items (
        commitment_id BIGINT NOT NULL REFERENCES commitments (id),
        sop_instance_uid TEXT NOT NULL
    );
    CREATE INDEX commitment_items_instance ON commitment_items (sop_instance_uid);
    CREATE INDEX commitment_items_commitment ON commitment_items (commitment_id)
    """,
    # 7: audit retention (gateway/audit_retention.py) picks the oldest events by time; without
    # this index every housekeeping pass would read the whole audit trail.
    """
    CREATE INDEX events_at ON events (at)
    """,
)
