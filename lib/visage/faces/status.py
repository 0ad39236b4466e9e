"""What each face-analysis error means to a gRPC caller: ingest and the
classifier run the same pipeline, so they answer its failures alike."""
from __future__ import annotations

import grpc

from visage.faces.detectors import DetectorUnavailable
from visage.faces.pipeline import ImageTooLarge, InvalidImage
from visage.faces.pool import WorkerCrashed
from visage.server import RpcFailure

ANALYSIS_STATUS: dict[type[Exception], grpc.StatusCode] = {
    InvalidImage: grpc.StatusCode.INVALID_ARGUMENT,
    ImageTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    DetectorUnavailable: grpc.StatusCode.UNAVAILABLE,  # a remote detector (Azure) is down: the caller may retry
    WorkerCrashed: grpc.StatusCode.INTERNAL,
}
ANALYSIS_ERRORS = tuple(ANALYSIS_STATUS)
# REST statuses the gRPC code does not give (RESOURCE_EXHAUSTED would be 429).
ANALYSIS_HTTP_STATUS: dict[type[Exception], int] = {ImageTooLarge: 413}


def analysis_status(error: Exception) -> grpc.StatusCode:
    """The status for one of ANALYSIS_ERRORS."""
    return next(code for kind, code in ANALYSIS_STATUS.items() if isinstance(error, kind))


def analysis_failure(error: Exception, message: str) -> RpcFailure:
    """The RpcFailure to answer one of ANALYSIS_ERRORS with."""
    http_status = next((status for kind, status in ANALYSIS_HTTP_STATUS.items() if isinstance(error, kind)), None)
    return RpcFailure(analysis_status(error), message, http_status)
