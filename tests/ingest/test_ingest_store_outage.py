"""A store outage is UNAVAILABLE in ingest (a single image, and each image of a bulk
stream, which goes on), through the one mapping in visage.errors."""
from __future__ import annotations

import grpc
import pytest

from visage.v1 import ingest_pb2


def test_a_store_outage_is_unavailable(ingest_server, faces_dir, cut_off_store):
    stub, store, _port = ingest_server
    penny = (faces_dir / "bbt" / "penny" / "penny1.png").read_bytes()
    cut_off_store(store)
    with pytest.raises(grpc.RpcError) as raised:
        stub.IngestImage(ingest_pb2.IngestImageRequest(content=penny, filename="penny1.png"), timeout=120)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE and "store is unavailable" in raised.value.details()
    summary = stub.IngestImages(iter([ingest_pb2.IngestImagesRequest(content=penny, filename=name)
                                      for name in ("a", "b")]), timeout=120)
    assert [(r.filename, r.error_code) for r in summary.results] == [("a", "UNAVAILABLE"), ("b", "UNAVAILABLE")]
