"""Association negotiation for the listener: A-ASSOCIATE-RQ in, -AC or -RJ out (PS3.8 §7.1).

The PDU bodies are decoded and encoded with pynetdicom's PDU classes and the presentation
contexts negotiated with pynetdicom's `negotiate_as_acceptor`, so the rules are pynetdicom's;
what is ours is the policy (gateway/dimse/handlers.py decides who may associate) and the
contexts we offer: Verification and every storage SOP class, in every transfer syntax pydicom
knows, because we store what we receive and never transcode on the way in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, build_context, negotiate_as_acceptor
from pynetdicom.sop_class import _STORAGE_CLASSES

from gateway.dimse.pdu import ProtocolViolation

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# (result, source, diagnostic) of an A-ASSOCIATE-RJ, PS3.8 §9.3.4
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_APPLICATION_CONTEXT = (0x01, 0x01, 0x02)
REJECT_BUSY = (0x02, 0x03, 0x02)

REJECT_REASONS = {
    (0x01, 0x01): "no reason given",
    (0x01, 0x02): "application context name not supported",
    (0x01, 0x03): "calling AE title not recognised",
    (0x01, 0x07): "called AE title not recognised",
    (0x02, 0x01): "no reason given (ACSE)",
    (0x02, 0x02): "protocol version not supported",
    (0x03, 0x01): "temporary congestion",
    (0x03, 0x02): "local limit exceeded (dimse.max_associations)",
}


@dataclass(frozen=True, slots=True)
class AssociationRequest:
    """What an A-ASSOCIATE-RQ asked for, decoded."""

    calling_ae: str
    called_ae: str
    application_context: str
    max_pdu: int  # the longest P-DATA-TF PDU the peer accepts from us; 0 means no limit
    primitive: A_ASSOCIATE = field(repr=False)


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    """A presentation context we accepted: what may be sent on its ID, and how encoded."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str
    as_scp: bool = True  # the peer may send us requests of this SOP class
    as_scu: bool = False  # we may send requests (C-GET's C-STORE sub-operations) to the peer


def decode_request(body: bytes | memoryview) -> AssociationRequest:
    """Decode an A-ASSOCIATE-RQ body (without the 6-byte PDU header)."""
    pdu = A_ASSOCIATE_RQ()
    header = bytes((0x01, 0x00)) + len(body).to_bytes(4, "big")
    try:
        pdu.decode(header + bytes(body))
        primitive = pdu.to_primitive()
        max_pdu = primitive.maximum_length_received
    except Exception as exc:  # pynetdicom raises whatever its struct/UID parsing meets
        raise ProtocolViolation(f"the A-ASSOCIATE-RQ cannot be decoded ({exc})") from exc
    return AssociationRequest(
        calling_ae=str(primitive.calling_ae_title).strip(),
        called_ae=str(primitive.called_ae_title).strip(),
        application_context=str(primitive.application_context_name or ""),
        max_pdu=int(max_pdu or 0),
        primitive=primitive,
    )


def negotiate(
    request: AssociationRequest, max_pdu: int, services: frozenset[str] = frozenset()
) -> tuple[bytes, list[AcceptedContext]]:
    """The encoded A-ASSOCIATE-AC PDU and the contexts it accepts.

    `max_pdu` is the longest PDU we accept (announced to the peer in the AC); `services` the
    SOP classes of the message services the listener runs (query/retrieve, commitment), offered
    besides Verification and Storage.
    """
    asked = request.primitive
    roles = {
        item.sop_class_uid: (item.scu_role, item.scp_role)
        for item in asked.user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid is not None
    }
    results, role_replies = negotiate_as_acceptor(
        asked.presentation_context_definition_list,
        [*_supported_contexts(), *_service_contexts(services)],
        roles or None,
    )
    _prefer_requestor_syntax(asked.presentation_context_definition_list, results)
    answer = A_ASSOCIATE()
    answer.application_context_name = APPLICATION_CONTEXT
    answer.calling_ae_title = asked.calling_ae_title
    answer.called_ae_title = asked.called_ae_title
    answer.result = 0x00
    answer.result_source = 0x01
    answer.presentation_context_definition_results_list = results
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    answer.user_information = [length, implementation, version, *role_replies]
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(answer)
    accepted = [
        AcceptedContext(
            context_id=int(cx.context_id or 0),
            abstract_syntax=str(cx.abstract_syntax),
            transfer_syntax=str(cx.transfer_syntax[0]),
            as_scp=bool(cx.as_scp),
            as_scu=bool(cx.as_scu),
        )
        for cx in results
        if cx.result == 0x00 and cx.transfer_syntax
    ]
    return pdu.encode(), accepted


def _prefer_requestor_syntax(
    proposed: list[PresentationContext], results: list[PresentationContext]
) -> None:
    """On a context where we send C-STORE (C-GET's role reversal), take the transfer syntax
    the requestor listed first rather than the first in our order.

    pynetdicom picks in the acceptor's order, whose first is Implicit VR Little Endian; a
    C-GET requestor (getscu) lists Explicit VR Little Endian first, the syntax most stored
    objects have, and we send objects only in their stored syntax.
    """
    asked = {cx.context_id: cx for cx in proposed}
    known = _known_syntaxes()
    for cx in results:
        request = asked.get(cx.context_id)
        if cx.result != 0x00 or not cx.as_scu or request is None:
            continue
        first = next((ts for ts in request.transfer_syntax if str(ts) in known), None)
        if first is not None:
            cx.transfer_syntax = [first]


@cache
def _known_syntaxes() -> frozenset[str]:
    return frozenset(str(uid) for uid in AllTransferSyntaxes)


def reject(result: int, source: int, diagnostic: int) -> bytes:
    """An encoded A-ASSOCIATE-RJ PDU."""
    primitive = A_ASSOCIATE()
    primitive.result = result
    primitive.result_source = source
    primitive.diagnostic = diagnostic
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def reject_reason(source: int, diagnostic: int) -> str:
    return REJECT_REASONS.get((source, diagnostic), f"source {source}, diagnostic {diagnostic}")


def is_storage(sop_class_uid: str) -> bool:
    return sop_class_uid in _storage_class_uids()


@cache
def _supported_contexts() -> tuple[PresentationContext, ...]:
    syntaxes: list[str | UID] = list(AllTransferSyntaxes)
    contexts = [build_context(VERIFICATION_SOP_CLASS)]
    for uid in _STORAGE_CLASSES.values():
        # Both roles: a C-GET requestor proposes to be the storage SCP of its retrieval.
        context = build_context(uid, syntaxes)
        context.scu_role = True
        context.scp_role = True
        contexts.append(context)
    return tuple(contexts)


@cache
def _service_contexts(services: frozenset[str]) -> tuple[PresentationContext, ...]:
    # Identifiers and action information are small: the uncompressed syntaxes are enough.
    syntaxes: list[str | UID] = [
        ImplicitVRLittleEndian,
        ExplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
    ]
    return tuple(build_context(uid, syntaxes) for uid in sorted(services))


@cache
def _storage_class_uids() -> frozenset[str]:
    return frozenset(str(uid) for uid in _STORAGE_CLASSES.values())
