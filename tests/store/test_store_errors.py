"""One store error hierarchy: both backends raise only StoreError kinds, never the
driver's or sqlite3's own exceptions (translated at the backend's boundary)."""
from __future__ import annotations

import pytest

from visage.config import CassandraConfig, Config
from visage.store import open_store
from visage.store.base import NotFound, StoreCorrupt, StoreUnavailable
from visage.store.records import ImageRecord, LabelRecord
from visage.v1 import resources_pb2 as pb


def test_an_outage_is_store_unavailable_on_every_kind_of_call(store, cut_off_store):
    persona = store.create_persona("Ada")
    cut_off_store(store)
    calls = [
        lambda: store.get_persona(persona.persona_id),
        lambda: store.create_persona("Bob"),
        lambda: store.put_label(LabelRecord("f", persona.persona_id, pb.VERDICT_BELONGS)),
        lambda: store.activate_model_version(1),
        lambda: list(store.iter_embeddings()),  # a generator: translated while iterating
        lambda: store.read_events(""),
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable):
            call()


def test_sqlite_that_cannot_open_its_file_is_unavailable(tmp_path):
    (tmp_path / "data" / "visage.db").mkdir(parents=True)  # the store's file is a directory
    with pytest.raises(StoreUnavailable, match="unable to open"):
        open_store(Config(data_dir=tmp_path / "data"))


def test_cassandra_nobody_answers_is_unavailable(cassandra_session_keyspace):
    config = CassandraConfig(contact_points=("127.0.0.1",), port=1, keyspace="visage_nowhere")
    with pytest.raises(StoreUnavailable, match="cannot connect"):
        open_store(Config(store="cassandra", cassandra=config))


def test_not_found_is_a_store_error_and_missing_chunks_are_corrupt(store):
    with pytest.raises(NotFound):
        store.rename_persona("nobody", "X")
    image = ImageRecord("img-corrupt", "a.jpg", "image/jpeg", 1, 1, 3, 0, pb.IMAGE_STATUS_FACES_FOUND)
    store.put_image(image, b"abc", [])
    if hasattr(store, "_session"):  # Cassandra keeps bytes in chunks a crash can leave missing
        store._session.execute(f"DELETE FROM {store.keyspace}.image_chunks WHERE image_id = 'img-corrupt'")
        with pytest.raises(StoreCorrupt):
            store.get_image_content("img-corrupt")
    else:
        assert store.get_image_content("img-corrupt") == b"abc"
