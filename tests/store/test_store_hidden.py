"""Hidden faces and personas, and labels written as a batch, on both backends."""
from __future__ import annotations

import pytest

from test_store_conformance import make_image
from visage.store.base import NotFound
from visage.store.records import LabelRecord
from visage.v1 import resources_pb2 as pb


def hidden_events(store) -> list[tuple[str, dict]]:
    return [(e.subject, e.attributes) for e in store.read_events("", 10_000) if e.type == pb.EVENT_TYPE_HIDDEN_CHANGED]


def test_hide_and_show_faces_and_personas(store):
    store.put_image(*make_image(store, "img1"))
    persona = store.create_persona("Stranger")
    store.set_hidden("face", "img1-f0", True)
    store.set_hidden("face", "img1-f0", True)  # idempotent: no second event
    store.set_hidden("persona", persona.persona_id, True)
    assert store.hidden_ids("face") == {"img1-f0"} and store.hidden_ids("persona") == {persona.persona_id}
    store.set_hidden("face", "img1-f0", False)
    assert store.hidden_ids("face") == set()
    assert hidden_events(store) == [("img1-f0", {"kind": "face", "hidden": "true"}),
                                    (persona.persona_id, {"kind": "persona", "hidden": "true"}),
                                    ("img1-f0", {"kind": "face", "hidden": "false"})]
    with pytest.raises(NotFound):
        store.set_hidden("face", "no-such-face", True)
    with pytest.raises(NotFound):
        store.set_hidden("persona", "no-such-persona", True)


def test_erasing_forgets_that_a_face_or_persona_was_hidden(store):
    store.put_image(*make_image(store, "img2"))
    persona = store.create_persona("Gone")
    store.set_hidden("face", "img2-f1", True)
    store.set_hidden("persona", persona.persona_id, True)
    store.delete_face("img2-f1")
    store.delete_persona(persona.persona_id)
    assert store.hidden_ids("face") == set() and store.hidden_ids("persona") == set()


def test_put_labels_writes_every_label(store):
    store.put_image(*make_image(store, "img3", faces=3))
    persona = store.create_persona("Many")
    store.put_labels([LabelRecord(f"img3-f{i}", persona.persona_id, pb.VERDICT_BELONGS) for i in range(3)])
    assert {l.face_id for l in store.labels_of_persona(persona.persona_id, pb.VERDICT_BELONGS)} == {
        "img3-f0", "img3-f1", "img3-f2"}
