"""Persona lifecycle and hostile input, over a real gRPC channel."""
from __future__ import annotations


import grpc
import pytest

from visage.v1 import query_pb2
from visage.v1 import resources_pb2 as pb

from query_calls import assert_still_serving, create, label, rpc_error


def test_persona_lifecycle_with_counts(stub, store, add_image, activate_model, predict):
    penny = create(stub, "  Penny  ")
    assert penny.display_name == "Penny"  # trimmed
    assert penny.persona_id and penny.create_time.seconds > 0
    amy = create(stub, "amy")
    faces = add_image(store, 4)
    label(stub, faces[0].face_id, penny.persona_id)
    label(stub, faces[1].face_id, penny.persona_id)
    label(stub, faces[2].face_id, penny.persona_id, pb.VERDICT_NOT_BELONGS)
    version = activate_model(store, [penny.persona_id, amy.persona_id])
    # faces[0] is labelled (label wins), faces[2] rejected for Penny, faces[3] a real prediction.
    predict(store, version, (faces[0].face_id, penny.persona_id, 0.9),
            (faces[2].face_id, penny.persona_id, 0.8), (faces[3].face_id, penny.persona_id, 0.7))

    listed = stub.ListPersonas(query_pb2.ListPersonasRequest()).personas
    assert [p.display_name for p in listed] == ["amy", "Penny"]  # by name, case-insensitive
    got = stub.GetPersona(query_pb2.GetPersonaRequest(persona_id=penny.persona_id))
    for persona in (listed[1], got):
        assert persona.labelled_face_count == 2
        assert persona.predicted_face_count == 1
        assert persona.cover_face_id == faces[1].face_id  # newest labelled face
    assert listed[0].labelled_face_count == 0 and listed[0].cover_face_id == ""

    renamed = stub.UpdatePersona(query_pb2.UpdatePersonaRequest(
        persona=pb.Persona(persona_id=penny.persona_id, display_name="Penny Hofstadter")))
    assert renamed.display_name == "Penny Hofstadter" and renamed.labelled_face_count == 2

    stub.DeletePersona(query_pb2.DeletePersonaRequest(persona_id=penny.persona_id))
    assert [p.display_name for p in stub.ListPersonas(query_pb2.ListPersonasRequest()).personas] == ["amy"]
    face = stub.GetFace(query_pb2.GetFaceRequest(face_id=faces[0].face_id))
    assert list(face.labels) == [] and not face.HasField("prediction")  # labels and predictions went with it
    error = rpc_error(stub.GetPersona, query_pb2.GetPersonaRequest(persona_id=penny.persona_id))
    assert error.code() == grpc.StatusCode.NOT_FOUND and penny.persona_id in error.details()


def test_erase_persona_answers_the_ids_it_erased(stub, store, add_image, activate_model):
    """DeletePersona answers Empty; ErasePersona (REST's DELETE /v1/personas/{id}) the ids that went."""
    penny, amy = create(stub, "Penny"), create(stub, "Amy")
    first, second, amys = add_image(store, 2), add_image(store, 1), add_image(store, 1)
    label(stub, first[0].face_id, penny.persona_id)
    label(stub, second[0].face_id, penny.persona_id)
    label(stub, amys[0].face_id, amy.persona_id)
    version = activate_model(store, [penny.persona_id, amy.persona_id])

    erased = stub.ErasePersona(query_pb2.ErasePersonaRequest(persona_id=penny.persona_id, erase_faces=True))
    assert erased.persona_ids == [penny.persona_id]
    assert sorted(erased.image_ids) == sorted([first[0].image_id, second[0].image_id])
    assert sorted(erased.face_ids) == sorted(face.face_id for face in first + second)  # whole photos
    assert list(erased.withdrawn_versions) == [version]
    assert rpc_error(stub.GetFace, query_pb2.GetFaceRequest(face_id=first[1].face_id)).code() == grpc.StatusCode.NOT_FOUND

    kept = stub.ErasePersona(query_pb2.ErasePersonaRequest(persona_id=amy.persona_id))
    assert kept.persona_ids == [amy.persona_id] and not kept.face_ids and not kept.image_ids
    assert stub.GetFace(query_pb2.GetFaceRequest(face_id=amys[0].face_id)).face_id == amys[0].face_id
    again = rpc_error(stub.ErasePersona, query_pb2.ErasePersonaRequest(persona_id=amy.persona_id))
    assert again.code() == grpc.StatusCode.NOT_FOUND and amy.persona_id in again.details()


@pytest.mark.parametrize("name, reason", [
    ("", "required"),
    ("   \t ", "required"),
    ("x" * 201, "201 characters"),
    ("Bad\x00Name", "control character"),
    ("two\nlines", "control character"),
    ("bell\x07", "control character"),
    ("line\u2028sep", "control character"),
])
def test_bad_display_names_are_rejected_and_nothing_is_stored(stub, name, reason):
    error = rpc_error(stub.CreatePersona, query_pb2.CreatePersonaRequest(persona=pb.Persona(display_name=name)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "display_name" in error.details() and reason in error.details()
    assert stub.ListPersonas(query_pb2.ListPersonasRequest()).personas == []


@pytest.mark.parametrize("name", [
    "<script>alert('x')</script>",
    "Zoë \"Bobby\" O'Brien & <b>co</b>",
    "王小明 🙂",
    "x" * 200,
])
def test_hostile_but_valid_names_are_stored_exactly(stub, name):
    created = create(stub, name)
    assert created.display_name == name
    assert stub.GetPersona(query_pb2.GetPersonaRequest(persona_id=created.persona_id)).display_name == name


def test_rename_validates_and_keeps_the_old_name(stub):
    persona = create(stub, "Raj")
    error = rpc_error(stub.UpdatePersona, query_pb2.UpdatePersonaRequest(
        persona=pb.Persona(persona_id=persona.persona_id, display_name="\x1b[31mred")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stub.GetPersona(query_pb2.GetPersonaRequest(persona_id=persona.persona_id)).display_name == "Raj"


@pytest.mark.parametrize("call, request_message, missing", [
    ("GetPersona", query_pb2.GetPersonaRequest(persona_id="nope"), "nope"),
    ("DeletePersona", query_pb2.DeletePersonaRequest(persona_id="gone-1"), "gone-1"),
    ("UpdatePersona", query_pb2.UpdatePersonaRequest(persona=pb.Persona(persona_id="p-x", display_name="A")), "p-x"),
    ("ListPersonaFaces", query_pb2.ListPersonaFacesRequest(persona_id="p-y"), "p-y"),
    ("GetFace", query_pb2.GetFaceRequest(face_id="f-1"), "f-1"),
    ("GetFaceCrop", query_pb2.GetFaceCropRequest(face_id="f-2"), "f-2"),
    ("GetImage", query_pb2.GetImageRequest(image_id="i-1"), "i-1"),
    ("GetImageContent", query_pb2.GetImageContentRequest(image_id="i-2"), "i-2"),
    ("UnlabelFace", query_pb2.UnlabelFaceRequest(face_id="f-3", persona_id="p"), "f-3"),
])
def test_unknown_ids_are_not_found_with_the_id(stub, call, request_message, missing):
    error = rpc_error(getattr(stub, call), request_message)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert missing in error.details()
    assert_still_serving(stub)


@pytest.mark.parametrize("call, request_message, field", [
    ("GetPersona", query_pb2.GetPersonaRequest(), "persona_id"),
    ("DeletePersona", query_pb2.DeletePersonaRequest(), "persona_id"),
    ("UpdatePersona", query_pb2.UpdatePersonaRequest(persona=pb.Persona(display_name="A")), "persona_id"),
    ("GetFace", query_pb2.GetFaceRequest(), "face_id"),
    ("GetImage", query_pb2.GetImageRequest(image_id="i" * 300), "image_id"),
    ("LabelFace", query_pb2.LabelFaceRequest(face_id="f", persona_id="p"), "verdict"),
    ("LabelFace", query_pb2.LabelFaceRequest(face_id="f", persona_id="p", verdict=7), "verdict"),
    ("LabelFace", query_pb2.LabelFaceRequest(persona_id="p", verdict=pb.VERDICT_BELONGS), "face_id"),
    ("ListPersonaFaces", query_pb2.ListPersonaFacesRequest(persona_id="p", kind=9), "kind"),
    ("ListPersonas", query_pb2.ListPersonasRequest(page_size=-1), "page_size"),
])
def test_malformed_requests_are_invalid_argument(stub, call, request_message, field):
    error = rpc_error(getattr(stub, call), request_message)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.details()
    assert_still_serving(stub)


def test_store_failures_map_to_clear_statuses(stub, store, monkeypatch):
    def bug():
        raise KeyError("oops")

    monkeypatch.setattr(store, "list_personas", bug)
    error = rpc_error(stub.ListPersonas, query_pb2.ListPersonasRequest())
    assert error.code() == grpc.StatusCode.INTERNAL and "ListPersonas" in error.details()
    monkeypatch.undo()
    assert_still_serving(stub)


def test_a_store_outage_is_unavailable_and_the_service_stays_up(stub, store, cut_off_store):
    cut_off_store(store)
    for call, request in [(stub.ListPersonas, query_pb2.ListPersonasRequest()),
                          (stub.CreatePersona, query_pb2.CreatePersonaRequest(persona=pb.Persona(display_name="A")))]:
        error = rpc_error(call, request)
        assert error.code() == grpc.StatusCode.UNAVAILABLE and "store is unavailable" in error.details()


def test_persona_counts_leave_out_faces_a_label_decides(stub, store, add_image, activate_model, predict):
    penny, amy = create(stub, "Penny"), create(stub, "Amy")
    faces = add_image(store, 8)
    ids = [face.face_id for face in faces]
    old = activate_model(store, [penny.persona_id, amy.persona_id])
    predict(store, old, *[(face_id, amy.persona_id, 0.5) for face_id in ids])  # replaced below, or standing
    version = activate_model(store, [penny.persona_id, amy.persona_id])
    predict(store, version, (ids[0], penny.persona_id, 0.9), (ids[1], penny.persona_id, 0.8),
            (ids[2], penny.persona_id, 0.7), (ids[3], amy.persona_id, 0.6), (ids[4], amy.persona_id, 0.5),
            (ids[5], "", 0.1))
    label(stub, ids[1], amy.persona_id)  # belongs to Amy: no longer a Penny prediction
    label(stub, ids[2], penny.persona_id, pb.VERDICT_NOT_BELONGS)  # rejected for Penny
    label(stub, ids[3], penny.persona_id, pb.VERDICT_NOT_BELONGS)  # rejected for Penny, still predicted Amy
    listed = {p.display_name: p for p in stub.ListPersonas(query_pb2.ListPersonasRequest()).personas}
    assert (listed["Penny"].labelled_face_count, listed["Penny"].predicted_face_count) == (0, 1)
    # Amy: faces 3 and 4, and 6 and 7 whose verdict the new version did not change (it stands).
    assert (listed["Amy"].labelled_face_count, listed["Amy"].predicted_face_count) == (1, 4)
    assert listed["Amy"].cover_face_id == ids[1]
    for persona in (penny, amy):  # the counts are the lengths of the lists the UI opens
        predicted = stub.ListPersonaFaces(query_pb2.ListPersonaFacesRequest(
            persona_id=persona.persona_id, kind=query_pb2.FACE_KIND_PREDICTED)).faces
        assert len(predicted) == listed[persona.display_name].predicted_face_count
        got = stub.GetPersona(query_pb2.GetPersonaRequest(persona_id=persona.persona_id))
        assert got.predicted_face_count == len(predicted)
