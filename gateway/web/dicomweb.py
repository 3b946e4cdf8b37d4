"""The DICOMweb route table (PS3.18 resources) with the scope each one needs.

Reading (QIDO-RS, WADO-RS) needs `dicomweb.read`; storing (STOW-RS) needs `dicomweb.write`.
Order matters only where Starlette could confuse paths: `/frames/{frames}/rendered` and
`/frames/{frames}/thumbnail` come before `/frames/{frames}`.
"""

from __future__ import annotations

from gateway.auth.principal import SCOPE_READ, SCOPE_WRITE
from gateway.web.frames import retrieve_frames
from gateway.web.guard import Endpoint
from gateway.web.qido import search_for_instances, search_for_series, search_for_studies
from gateway.web.rendered import render_frame, render_instance, thumbnail
from gateway.web.stow import store_instances
from gateway.web.wado import retrieve, retrieve_bulkdata, retrieve_metadata

_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{instance}"
_FRAMES = _INSTANCE + "/frames/{frames}"
GET, POST = ("GET",), ("POST",)


def dicomweb_endpoints() -> list[Endpoint]:
    """Every STOW-RS, QIDO-RS and WADO-RS route."""
    return [
        # STOW-RS
        Endpoint("/studies", store_instances, POST, SCOPE_WRITE, "stow_studies"),
        Endpoint(_STUDY, store_instances, POST, SCOPE_WRITE, "stow_study"),
        # QIDO-RS
        Endpoint("/studies", search_for_studies, GET, SCOPE_READ, "qido_studies"),
        Endpoint("/series", search_for_series, GET, SCOPE_READ, "qido_series"),
        Endpoint("/instances", search_for_instances, GET, SCOPE_READ, "qido_instances"),
        Endpoint(_STUDY + "/series", search_for_series, GET, SCOPE_READ, "qido_study_series"),
        Endpoint(
            _STUDY + "/instances", search_for_instances, GET, SCOPE_READ, "qido_study_instances"
        ),
        Endpoint(
            _SERIES + "/instances", search_for_instances, GET, SCOPE_READ, "qido_series_instances"
        ),
        # WADO-RS
        Endpoint(_STUDY, retrieve, GET, SCOPE_READ, "wado_study"),
        Endpoint(_SERIES, retrieve, GET, SCOPE_READ, "wado_series"),
        Endpoint(_INSTANCE, retrieve, GET, SCOPE_READ, "wado_instance"),
        Endpoint(_STUDY + "/metadata", retrieve_metadata, GET, SCOPE_READ, "wado_study_metadata"),
        Endpoint(_SERIES + "/metadata", retrieve_metadata, GET, SCOPE_READ, "wado_series_metadata"),
        Endpoint(
            _INSTANCE + "/metadata", retrieve_metadata, GET, SCOPE_READ, "wado_instance_metadata"
        ),
        Endpoint(
            _INSTANCE + "/bulk/{path:path}", retrieve_bulkdata, GET, SCOPE_READ, "wado_bulkdata"
        ),
        Endpoint(_INSTANCE + "/rendered", render_instance, GET, SCOPE_READ, "wado_rendered"),
        Endpoint(_FRAMES + "/rendered", render_frame, GET, SCOPE_READ, "wado_frame_rendered"),
        Endpoint(_STUDY + "/thumbnail", thumbnail, GET, SCOPE_READ, "wado_study_thumbnail"),
        Endpoint(_SERIES + "/thumbnail", thumbnail, GET, SCOPE_READ, "wado_series_thumbnail"),
        Endpoint(_INSTANCE + "/thumbnail", thumbnail, GET, SCOPE_READ, "wado_instance_thumbnail"),
        Endpoint(_FRAMES + "/thumbnail", thumbnail, GET, SCOPE_READ, "wado_frame_thumbnail"),
        Endpoint(_FRAMES, retrieve_frames, GET, SCOPE_READ, "wado_frames"),
    ]
