"""Storage Commitment Push Model SCP (PS3.4 Annex J): settings, deciding, reporting.

A modality asks the gateway, with N-ACTION on the DIMSE listener
(gateway/dimse/commitment.py), to take responsibility for instances it sent. The request is
persisted (gateway/db/commitments.py) before it is answered; the reporter thread
(reporter.py) decides each requested instance by the configured policy (decide.py) and sends
the result as an N-EVENT-REPORT on a new association to the address configured for the
requesting AE title (settings.py), retrying until the peer answers or the report is too old.
"""
