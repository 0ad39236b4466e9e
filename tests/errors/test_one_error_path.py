"""One error path (issue 23): every error a handler or interceptor answers with is an
exception kind registered once in visage.errors, raised by the code that finds it and
answered there. Checked mechanically (nothing outside visage.errors and visage.guard puts
a status on a context; every project kind a service raises is registered; every servicer
answers through visage.errors) and by behaviour: each former path (a trainer refusal, a
face-analysis failure, an auth refusal) answers the same status through a real server."""
from __future__ import annotations

import ast
import builtins
import importlib
import inspect
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool

from visage import errors
from visage.auth.tokens import AuthError
from visage.errors import STATUS_HINT_HEADER
from visage.faces.detectors import DetectorUnavailable
from visage.faces.pipeline import AnalyzedImage, ImageTooLarge, InvalidImage, NotAFace
from visage.faces.pool import ANALYSIS_ERRORS, WorkerCrashed
from visage.nonblocking import is_non_blocking
from visage.v1 import classify_pb2, classify_pb2_grpc, ingest_pb2, ingest_pb2_grpc, train_pb2, train_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("classifier", "ingest", "query", "trainer")  # the gRPC services (the gateway is Envoy's config)
ANSWERING_MODULES = {"lib/visage/errors.py", "lib/visage/guard.py"}
STATUS_SETTERS = {"abort", "abort_with_status", "set_code", "set_details"}
# Project kinds a service raises that never reach a caller, and why.
NOT_TOWARDS_CALLERS = {
    "ModelLoadError": "a model that cannot be loaded: the classifier keeps its previous one",
    "NothingToTrain": "a training job's outcome: training.run_job ends the job SUCCEEDED",
    "LabelsNotHonoured": "a training job's outcome: training.run_job reports the job FAILED",
}
_MISSING = object()


# ---- the rule, read from the source ---------------------------------------------
def checked_sources(root: Path) -> list[Path]:
    """The library and the services, without generated code (lib/visage/v1)."""
    library = root / "lib/visage"
    return sorted([*(path for path in library.rglob("*.py") if path.relative_to(library).parts[0] != "v1"),
                   *(root / "services").rglob("*.py")])


def status_setting_calls(root: Path) -> list[str]:
    """Every call that puts a status on a context outside visage.errors and visage.guard."""
    found = []
    for path in checked_sources(root):
        relative = path.relative_to(root).as_posix()
        if relative in ANSWERING_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text(), relative)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in STATUS_SETTERS:
                found.append(f"{relative}:{node.lineno}: .{node.func.attr}(...)")
    return found


def service_modules(root: Path):
    """(path, imported module) of each service module that serves callers (not a CLI)."""
    for service in SERVICES:
        for path in sorted((root / "services" / service).glob("*.py")):
            if path.stem == "__main__" or path.stem.endswith("cli"):
                continue
            name = f"visage_{service}" if path.stem == "__init__" else f"visage_{service}.{path.stem}"
            yield path, importlib.import_module(name)


def _alternatives(expression: ast.expr):
    """`raise A(...) if c else B(...)` raises either."""
    if isinstance(expression, ast.IfExp):
        yield from _alternatives(expression.body)
        yield from _alternatives(expression.orelse)
    else:
        yield expression


def _resolve(expression: ast.expr, module):
    """What a raise names, looked up in its module: a class or a function; None for an
    error caught and raised again (a local name, `type(error)(...)`); _MISSING for a
    call whose target cannot be found."""
    target = expression.func if isinstance(expression, ast.Call) else expression
    path: list[str] = []
    while isinstance(target, ast.Attribute):
        path.insert(0, target.attr)
        target = target.value
    if not isinstance(target, ast.Name):
        return None
    value = getattr(module, target.id, getattr(builtins, target.id, _MISSING))
    for name in path:
        value = getattr(value, name, _MISSING)
    if value is _MISSING:
        return _MISSING if isinstance(expression, ast.Call) else None
    return value


def raised_kinds(root: Path) -> list[tuple[str, object]]:
    """(where, what) for every raise in the service modules that serve callers."""
    raised = []
    for path, module in service_modules(root):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                for expression in _alternatives(node.exc):
                    what = _resolve(expression, module)
                    if what is not None:
                        raised.append((f"{path.relative_to(root)}:{node.lineno}", what))
    return raised


def unregistered_kinds(root: Path) -> list[str]:
    unanswered = []
    for where, what in raised_kinds(root):
        if what is _MISSING:
            unanswered.append(f"{where}: cannot tell what it raises")
        elif not (inspect.isclass(what) and issubclass(what, BaseException)):
            unanswered.append(f"{where}: raises what {what.__name__}() builds; raise a registered kind")
        elif what.__module__ != "builtins" and what.__name__ not in NOT_TOWARDS_CALLERS \
                and errors.registered_status(what) is None:
            unanswered.append(f"{where}: {what.__module__}.{what.__name__} is not registered in visage.errors")
    return unanswered


def servicer_classes() -> list[type]:
    """Each service's servicer: a class of its server module built on a generated servicer."""
    classes = []
    for service in SERVICES:
        module = importlib.import_module(f"visage_{service}.server")
        classes += [cls for cls in vars(module).values() if inspect.isclass(cls) and cls.__module__ == module.__name__
                    and any(base.__module__.endswith("_pb2_grpc") for base in cls.__mro__[1:])]
    return classes


def test_nothing_but_visage_errors_and_the_guard_puts_a_status_on_a_context():
    assert status_setting_calls(REPO) == []


def test_the_scan_sees_a_handler_that_aborts(tmp_path):
    """The AST scan is not vacuous: the trainer's old way is found."""
    (tmp_path / "services/trainer").mkdir(parents=True)
    (tmp_path / "lib/visage").mkdir(parents=True)
    (tmp_path / "services/trainer/server.py").write_text(
        "def GetTrainingJob(self, request, context):\n"
        "    context.abort(grpc.StatusCode.INVALID_ARGUMENT, 'job_id is required')\n")
    assert status_setting_calls(tmp_path) == ["services/trainer/server.py:2: .abort(...)"]


def test_every_kind_a_service_raises_towards_callers_is_registered():
    assert unregistered_kinds(REPO) == []
    names = {what.__name__ for _, what in raised_kinds(REPO) if inspect.isclass(what)}
    assert {"NotFound", "InvalidArgument", "AlreadyExists", "ModelGone"} <= names  # the scan resolves raises
    for name in NOT_TOWARDS_CALLERS:  # the exceptions stay true: raised, and not answered
        assert name in names, f"{name} is no longer raised: drop it from NOT_TOWARDS_CALLERS"


def test_the_former_separate_tables_are_registered_kinds():
    """faces/status.py's table, the auth interceptor's string keys: now kinds in visage.errors."""
    assert {kind: errors.registered_status(kind) for kind in ANALYSIS_ERRORS} == {
        InvalidImage: grpc.StatusCode.INVALID_ARGUMENT, ImageTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
        DetectorUnavailable: grpc.StatusCode.UNAVAILABLE, WorkerCrashed: grpc.StatusCode.INTERNAL,
        NotAFace: grpc.StatusCode.INVALID_ARGUMENT}
    assert {kind.status: errors.registered_status(kind) for kind in AuthError.__subclasses__()} == {
        "unauthenticated": grpc.StatusCode.UNAUTHENTICATED, "permission_denied": grpc.StatusCode.PERMISSION_DENIED,
        "unavailable": grpc.StatusCode.UNAVAILABLE}


def test_every_servicer_answers_through_visage_errors_wherever_it_is_mounted():
    classes = servicer_classes()
    assert len(classes) == len(SERVICES)
    for cls in classes:
        base = next(base for base in cls.__mro__[1:] if base.__module__.endswith("_pb2_grpc"))
        service = descriptor_pool.Default().FindServiceByName(f"visage.v1.{base.__name__.removesuffix('Servicer')}")
        for method in service.methods:
            implementation = vars(cls).get(method.name)
            assert implementation is not None, f"{cls.__name__} does not implement {method.name}"
            assert hasattr(implementation, "__wrapped__"), f"{cls.__name__} is not marked @answer_errors"
            # The decorator tells a response stream by its generator function (or, for one
            # that holds no thread while idle, its mark: visage.nonblocking).
            streams = inspect.isgeneratorfunction(implementation.__wrapped__) or is_non_blocking(implementation)
            assert streams == method.server_streaming, f"{cls.__name__}.{method.name}"


# ---- behaviour through real in-process servers ------------------------------------
FAILURES = {
    b"garbage": (InvalidImage, "not an image (or a format other than JPEG, PNG, WebP, BMP or GIF)"),
    b"huge": (ImageTooLarge, "the image is 30,000,000 bytes; the limit is 20,971,520 bytes"),
    b"detector-down": (DetectorUnavailable, "the Azure face service refused the request (HTTP 503)"),
    b"crashes": (WorkerCrashed, "a face worker crashed twice on this image"),
    b"bug": (RuntimeError, "boom"),
}


class FailingPool:
    """What ingest and the classifier use of a PipelinePool; analyze() fails as the bytes say."""
    workers = 1

    def __init__(self, config) -> None:
        self.config = config

    def analyze(self, content: bytes) -> AnalyzedImage:
        if content in FAILURES:
            kind, message = FAILURES[content]
            raise kind(message)
        return AnalyzedImage("image/png", 1, 1, [])


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        result = call(*args, timeout=30, **kwargs)
        if not hasattr(result, "SerializeToString"):  # a response stream: read it
            list(result)
    return raised.value


def status_hint(error: grpc.RpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get(STATUS_HINT_HEADER)


@pytest.fixture
def trainer(config, sqlite_store):
    from visage_trainer.server import start
    service = start(config, sqlite_store, "127.0.0.1:0")
    yield f"127.0.0.1:{service.port}"
    service.stop(0)


@pytest.fixture
def ingest(config, sqlite_store):
    from visage_ingest.server import start
    service = start(config, sqlite_store, "127.0.0.1:0", pool=FailingPool(config))
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield ingest_pb2_grpc.IngestServiceStub(channel)
    service.stop(0)


@pytest.fixture
def classifier(config, sqlite_store):
    from visage_classifier.server import start
    service = start(config, sqlite_store, "127.0.0.1:0", pool=FailingPool(config), watch_events=False)
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield classify_pb2_grpc.ClassifyServiceStub(channel)
    service.stop(0)


def test_trainer_refusals_answer_as_its_aborts_did(trainer):
    with grpc.insecure_channel(trainer) as channel:
        stub = train_pb2_grpc.TrainServiceStub(channel)
        for call, request, code, details in [
            (stub.GetTrainingJob, train_pb2.GetTrainingJobRequest(), grpc.StatusCode.INVALID_ARGUMENT,
             "job_id is required"),
            (stub.GetTrainingJob, train_pb2.GetTrainingJobRequest(job_id="nope"), grpc.StatusCode.NOT_FOUND,
             "training job 'nope' not found"),
            (stub.WatchTrainingJobs, train_pb2.WatchTrainingJobsRequest(job_id="nope"), grpc.StatusCode.NOT_FOUND,
             "training job 'nope' not found"),
            (stub.GetModelVersion, train_pb2.GetModelVersionRequest(version=7), grpc.StatusCode.NOT_FOUND,
             "model version 7 not found"),
            (stub.GetActiveModelVersion, train_pb2.GetActiveModelVersionRequest(), grpc.StatusCode.NOT_FOUND,
             "no model version is active yet: label some faces first"),
        ]:
            error = rpc_error(call, request)
            assert (error.code(), error.details()) == (code, details), call._method


def test_auth_refusals_answer_their_kinds_status(trainer, plain_channel, issue_token):
    with plain_channel(trainer) as channel:
        stub = train_pb2_grpc.TrainServiceStub(channel)
        anonymous = rpc_error(stub.GetActiveModelVersion, train_pb2.GetActiveModelVersionRequest())
        assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED and "needs a token" in anonymous.details()
        watching = rpc_error(stub.WatchTrainingJobs, train_pb2.WatchTrainingJobsRequest())
        assert watching.code() == grpc.StatusCode.UNAUTHENTICATED
        forged = rpc_error(stub.GetActiveModelVersion, train_pb2.GetActiveModelVersionRequest(),
                           metadata=[("authorization", "Bearer not-a-token")])
        assert forged.code() == grpc.StatusCode.UNAUTHENTICATED and "invalid token" in forged.details()
        viewer = rpc_error(stub.StartTraining, train_pb2.StartTrainingRequest(),
                           metadata=[("authorization", f"Bearer {issue_token('viewer', 'vic')}")])
        assert (viewer.code(), viewer.details()) == (grpc.StatusCode.PERMISSION_DENIED,
                                                     "StartTraining needs the operator role; vic is viewer")


@pytest.mark.parametrize("content, code, hint", [
    (b"garbage", grpc.StatusCode.INVALID_ARGUMENT, None),
    (b"huge", grpc.StatusCode.RESOURCE_EXHAUSTED, "413"),  # REST 413, not the 429 Envoy gives the code
    (b"detector-down", grpc.StatusCode.UNAVAILABLE, None),
    (b"crashes", grpc.StatusCode.INTERNAL, None),
])
def test_an_analysis_failure_answers_its_status_naming_the_image(ingest, classifier, content, code, hint):
    error = rpc_error(ingest.IngestImage, ingest_pb2.IngestImageRequest(content=content, filename="dir/photo.jpg"))
    assert (error.code(), error.details(), status_hint(error)) == (code, f"photo.jpg: {FAILURES[content][1]}", hint)
    error = rpc_error(classifier.Classify, classify_pb2.ClassifyRequest(content=content))
    assert (error.code(), error.details(), status_hint(error)) == (code, FAILURES[content][1], hint)


def test_an_unregistered_exception_is_still_a_bug(ingest):
    error = rpc_error(ingest.IngestImage, ingest_pb2.IngestImageRequest(content=b"bug"))
    assert error.code() == grpc.StatusCode.INTERNAL
    assert "internal error (RuntimeError)" in error.details() and "boom" not in error.details()


def test_stream_items_fail_alone_with_their_status(ingest, classifier):
    reply = ingest.IngestImages(iter([ingest_pb2.IngestImagesRequest(content=content, filename=f"{index}.png")
                                      for index, content in enumerate([b"huge", b"fine", b"bug", b"garbage"])]),
                                timeout=30)
    assert [(result.error_code, result.error_message) for result in reply.results] == [
        ("RESOURCE_EXHAUSTED", f"0.png: {FAILURES[b'huge'][1]}"), ("", ""), ("INTERNAL", "internal error: boom"),
        ("INVALID_ARGUMENT", f"3.png: {FAILURES[b'garbage'][1]}")]
    answers = {answer.request_id: answer for answer in classifier.ClassifyStream(iter([
        classify_pb2.ClassifyStreamRequest(request_id="image", content=b"detector-down"),
        classify_pb2.ClassifyStreamRequest(request_id="nothing"),
        classify_pb2.ClassifyStreamRequest(request_id="short", embedding=classify_pb2.Embedding(values=[1.0]))]),
        timeout=30)}
    assert {rid: (answer.error_code, answer.error_message) for rid, answer in answers.items()} == {
        "image": ("UNAVAILABLE", FAILURES[b"detector-down"][1]),
        "nothing": ("INVALID_ARGUMENT", "item has neither content nor embedding"),
        "short": ("INVALID_ARGUMENT", "embeddings[0] has 1 values; expected 128")}
    error = rpc_error(classifier.ClassifyEmbeddings, classify_pb2.ClassifyEmbeddingsRequest())
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "embeddings is required (at least one 128-d embedding)")
