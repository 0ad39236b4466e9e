"""`visage train` (start a job and follow it) and `visage models list|activate`."""
from __future__ import annotations

import argparse
import sys

import grpc
from tqdm import tqdm

from visage.auth import client as auth_client
from visage.config import Config
from visage.v1 import resources_pb2 as pb
from visage.v1 import query_pb2, query_pb2_grpc, train_pb2, train_pb2_grpc

TERMINAL = (pb.TRAINING_PHASE_SUCCEEDED, pb.TRAINING_PHASE_FAILED)
NAME_LOOKUP_SECONDS = 5
CONFIDENCE_MEANING = ("similarity to the persona, 1 - distance/1.2 (0.5 = dlib's same-person limit 0.6); "
                      "a face is named when it reaches the persona's threshold; for 'unknown', 1 - the "
                      "similarity to the nearest persona")


def register(subparsers) -> None:
    default_address = f"{Config.from_env().host}:{Config.from_env().ports.trainer}"
    train = subparsers.add_parser("train", help="train a new model version now and show its progress")
    train.add_argument("--address", default=default_address, help="trainer address (host:port)")
    train.add_argument("--reason", default="", help="free text kept with the job")
    train.set_defaults(run=run_train)

    models = subparsers.add_parser("models", help="list model versions or activate one (rollback)")
    models.add_argument("--address", default=default_address, help="trainer address (host:port)")
    actions = models.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every version, newest first").set_defaults(run=run_models_list)
    activate = actions.add_parser("activate", help="make a stored version the active one and pin it "
                                                   "(later versions wait until `models release`)")
    activate.add_argument("version", type=int)
    activate.set_defaults(run=run_models_activate)
    release = actions.add_parser("release", help="release the pin: the newest version held back by it goes live, "
                                                 "later ones are activated by the gate again")
    release.set_defaults(run=run_models_release)


def _stub(address: str) -> train_pb2_grpc.TrainServiceStub:
    return train_pb2_grpc.TrainServiceStub(auth_client.channel(address))


def _fail(error: grpc.RpcError) -> int:
    print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
    return 1


def run_train(args: argparse.Namespace) -> int:
    stub = _stub(args.address)
    try:
        job = stub.StartTraining(train_pb2.StartTrainingRequest(reason=args.reason))
        with tqdm(total=1, unit="face", desc="queued", file=sys.stderr) as bar:
            for job in stub.WatchTrainingJobs(train_pb2.WatchTrainingJobsRequest(job_id=job.job_id)):
                bar.set_description(pb.TrainingPhase.Name(job.phase).removeprefix("TRAINING_PHASE_").lower())
                bar.total, bar.n = max(job.total, 1), min(job.done, max(job.total, 1))
                bar.refresh()
    except grpc.RpcError as error:
        return _fail(error)
    print(f"job {job.job_id}: {pb.TrainingPhase.Name(job.phase)}: {job.message}")
    if job.phase != pb.TRAINING_PHASE_SUCCEEDED:
        return 1
    if job.model_version:
        print(f"version {job.model_version} is {'ACTIVE' if job.activated else 'NOT ACTIVE'}: {_decision(job)}")
        _print_metrics(job.metrics)
    return 0


def _decision(job: pb.TrainingJob) -> str:
    """The gate's decision in plain words (the job message is "version N: <reason>")."""
    reason = job.message.split(": ", 1)[-1]
    if job.activated:
        return "it passed the gate and now names faces"
    if reason.startswith("rejected"):
        return f"the gate REJECTED it ({reason}); the active version keeps naming faces"
    return f"held back ({reason})"


def _rate(value: float, evaluated_on: int) -> str:
    """A rate, or n/a when it was measured on no face."""
    return f"{value:.3f}" if evaluated_on else "n/a"


def _print_metrics(metrics: pb.ModelMetrics) -> None:
    print(f"accuracy {_rate(metrics.accuracy, metrics.evaluated_faces)} on {metrics.evaluated_faces} held-out faces  "
          f"unknown rejection {_rate(metrics.unknown_rejection_rate, metrics.evaluated_unknowns)} on "
          f"{metrics.evaluated_unknowns} unknowns  faces {metrics.labelled_faces}  personas {metrics.personas}")
    print(f"evaluation: {metrics.evaluation_method}")
    print(f"confidence: {CONFIDENCE_MEANING}")
    names = _persona_names([item.persona_id for item in metrics.per_persona])
    width = max((len(name) for name in names.values()), default=0)
    for item in metrics.per_persona:
        print(f"  {names.get(item.persona_id, ''):<{width}} {item.persona_id:<36} precision {item.precision:.3f}  "
              f"recall {item.recall:.3f}  support {item.support}  named at confidence >= {item.threshold:.2f}")


def _persona_names(persona_ids: list[str]) -> dict[str, str]:
    """Each persona's name, from the query service (VISAGE_QUERY_PORT); none that it cannot give."""
    config, names = Config.from_env(), {}
    with auth_client.channel(f"{config.host}:{config.ports.query}") as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        for persona_id in persona_ids:
            try:
                names[persona_id] = stub.GetPersona(query_pb2.GetPersonaRequest(persona_id=persona_id),
                                                    timeout=NAME_LOOKUP_SECONDS).display_name
            except grpc.RpcError as error:  # the id alone
                if error.code() != grpc.StatusCode.NOT_FOUND:  # the query service is elsewhere
                    break
    return names


def run_models_list(args: argparse.Namespace) -> int:
    stub, token, pinned, listed = _stub(args.address), "", False, 0
    print(f"{'version':>7}  {'state':<9} {'accuracy':>8} {'unknown':>8} {'faces':>7} {'personas':>8}  gate")
    try:
        while True:
            page = stub.ListModelVersions(train_pb2.ListModelVersionsRequest(page_size=100, page_token=token))
            for v in page.model_versions:
                pinned, listed = pinned or v.pinned, listed + 1
                state = pb.ModelState.Name(v.state).removeprefix("MODEL_STATE_").lower() + ("*" if v.pinned else "")
                m = v.metrics
                print(f"{v.version:>7}  {state:<9} {_rate(m.accuracy, m.evaluated_faces):>8} "
                      f"{_rate(m.unknown_rejection_rate, m.evaluated_unknowns):>8} "
                      f"{v.metrics.labelled_faces:>7} {v.metrics.personas:>8}  {v.gate_reason}")
            if not (token := page.next_page_token):
                if not listed:
                    print("no model versions yet: one is trained a moment after faces are labelled (`visage label`)")
                if pinned:  # the legend of the "*", only where one is shown
                    print("* pinned: activated by hand; new versions wait until `visage models release`")
                return 0
    except grpc.RpcError as error:
        return _fail(error)


def run_models_activate(args: argparse.Namespace) -> int:
    try:
        version = _stub(args.address).ActivateModelVersion(train_pb2.ActivateModelVersionRequest(version=args.version))
    except grpc.RpcError as error:
        return _fail(error)
    print(f"version {version.version} is active and pinned: new versions are trained and listed but not "
          "activated until `visage models release`")
    if "rejected" in version.gate_reason:
        print(f"note: the gate had rejected it ({version.gate_reason})")
    return 0


def run_models_release(args: argparse.Namespace) -> int:
    try:
        version = _stub(args.address).ReleaseModelPin(train_pb2.ReleaseModelPinRequest())
    except grpc.RpcError as error:
        return _fail(error)
    print(f"pin released; version {version.version} is active: {version.gate_reason}")
    return 0
