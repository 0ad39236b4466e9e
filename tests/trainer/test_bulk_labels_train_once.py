"""BatchLabelFaces and MergePersonas through the query service each lead to one
training run (the labels land within the trainer's debounce period)."""
from __future__ import annotations

import grpc

from visage.v1 import query_pb2, query_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_query.server import start as start_query
from visage_trainer.training import TrainerSettings

from test_trainer_service import serve, wait_for_version
from trainer_helpers import held_out

SETTINGS = TrainerSettings(debounce_seconds=1.0, gate_margin=0.05, poll_seconds=0.05)


def test_a_batch_and_a_merge_each_train_once(config, world):
    trainer, trainer_channel, _ = serve(config, world.store, SETTINGS)
    query = start_query(config, world.store, "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{query.port}") as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            labels = {person: [query_pb2.BatchLabel(face_id=world.face_ids[p.path], verdict=pb.VERDICT_BELONGS)
                               for p in world.photos if p.person == person and not held_out(p)]
                      for person in world.personas}
            everyone = [label for person_labels in labels.values() for label in person_labels]
            for person, person_labels in labels.items():  # one request per persona: all-or-nothing each
                stub.BatchLabelFaces(query_pb2.BatchLabelFacesRequest(persona_id=world.personas[person],
                                                                      labels=person_labels))
            first = wait_for_version(world.store, 1, timeout=120)
            assert first.lineage["label_count"] == len(everyone)

            stub.MergePersonas(query_pb2.MergePersonasRequest(persona_id=world.personas["penny"],
                                                              source_persona_ids=[world.personas["amy"]]))
            second = wait_for_version(world.store, 2, timeout=120)
            assert world.personas["amy"] not in second.persona_ids
            assert second.lineage["label_count"] == len(everyone)  # amy's labels moved, none lost
            assert len(world.store.list_training_jobs(10)) == 2  # one run each
    finally:
        query.stop(grace=0)
        trainer_channel.close()
        trainer.stop(0)
