"""`visage ingest PATH [PATH...]`: walks folders, streams the images to the
ingest service in bounded IngestImages batches with a progress bar, and ends
with a summary table. Through the gateway (`--address host:8080`) a batch its rate
limit refuses is sent again after the `retry-after` it gives. Exit code 1 if any
image failed, 2 if the service could not be reached."""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from tqdm import tqdm

from visage.auth import client as auth_client
from visage.config import Config
from visage.retry_after import retry_after_seconds
from visage.server import MAX_MESSAGE_BYTES
from visage.v1 import ingest_pb2, ingest_pb2_grpc

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
DEFAULT_BATCH = 16
# Headroom for the request's other fields under the server's message limit.
MAX_FILE_BYTES = MAX_MESSAGE_BYTES - 64 * 1024
MAX_RATE_LIMIT_WAITS = 60  # per batch: through a gateway (--address host:8080) the image calls are rate-limited


def register(subparsers) -> None:
    parser = subparsers.add_parser("ingest", help="ingest image files and folders (recursively)")
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image file or folder")
    parser.add_argument("--address", default=None,
                        help="ingest service host:port (default: VISAGE_HOST:VISAGE_INGEST_PORT)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH,
                        help=f"images per IngestImages stream (default {DEFAULT_BATCH})")
    parser.add_argument("--no-face-ids", dest="face_ids", action="store_false",
                        help="do not list the stored face ids before the summary")
    parser.set_defaults(run=run)


@dataclass
class Summary:
    images: int = 0
    faces: int = 0
    without_face: int = 0
    duplicates: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    stored_faces: list[tuple[str, str]] = field(default_factory=list)  # (face id, file)

    def add(self, response: ingest_pb2.IngestImagesResponse, sent: list[str]) -> None:
        """`sent`: the local paths of the images streamed, in order (results keep that
        order); failures are reported by local path, as the server only has names."""
        self.images += response.images
        self.faces += response.faces
        self.without_face += response.images_without_face
        self.duplicates += response.duplicates
        self.failures += [(path, f"{r.error_code}: {r.error_message}") for path, r in zip(sent, response.results)
                          if r.outcome == ingest_pb2.INGEST_OUTCOME_FAILED]
        self.stored_faces += [(face_id, r.filename) for r in response.results for face_id in r.face_ids]

    def face_listing(self) -> str:
        """Every face id with its file: what `visage label` and `visage faces show` take."""
        if not self.stored_faces:
            return ""
        width = max(len(face_id) for face_id, _ in self.stored_faces)
        return "\n".join([f"{'FACE ID':<{width}}  FILE"] +
                         [f"{face_id:<{width}}  {name}" for face_id, name in self.stored_faces])

    def table(self) -> str:
        rows = [("images", self.images), ("faces found", self.faces),
                ("images without a face", self.without_face), ("duplicates skipped", self.duplicates),
                ("failures", len(self.failures))]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name:<{width}}  {value:>7}" for name, value in rows]
        lines += [f"  failed: {name}: {reason}" for name, reason in self.failures]
        return "\n".join(lines)


def find_images(paths: list[Path]) -> list[Path]:
    """Files named on the command line are taken as they are; folders are
    walked for files with an image suffix, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(path)
    return found


def read_image(path: Path) -> bytes:
    """The file's bytes; raises OSError with the reason when it cannot be sent."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise OSError(f"file is {size:,} bytes, over the {MAX_FILE_BYTES:,}-byte message limit")
    return path.read_bytes()


def batches(files: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(files), size):
        yield files[start:start + size]


def send_batch(stub, files: list[Path], summary: Summary) -> None:
    """Streams one batch; files are read lazily so only one is held at a time."""
    unreadable: list[tuple[str, str]] = []
    sent: list[str] = []

    def requests() -> Iterator[ingest_pb2.IngestImagesRequest]:
        for path in files:
            try:
                content = read_image(path)
            except OSError as error:
                unreadable.append((str(path), f"not sent: {error.strerror or error}"))
                continue
            sent.append(str(path))
            # The name only: the client's directories are nobody's business (data minimisation).
            yield ingest_pb2.IngestImagesRequest(content=content, filename=path.name)

    summary.add(stub.IngestImages(requests()), sent)
    summary.images += len(unreadable)
    summary.failures += unreadable


def send_batch_within_rate_limit(stub, files: list[Path], summary: Summary, progress: tqdm) -> None:
    """send_batch, again after the wait the gateway asks for when its rate limit refuses the
    stream (it refuses a stream as it opens, before any image is stored)."""
    for _attempt in range(MAX_RATE_LIMIT_WAITS):
        try:
            send_batch(stub, files, summary)
            return
        except grpc.RpcError as error:
            wait = retry_after_seconds(error)
            if wait is None:
                raise
            progress.write(f"the gateway limits image calls: sending the next {len(files)} image(s) "
                           f"again in {wait:.0f} s")
            time.sleep(wait)
    send_batch(stub, files, summary)


def run(args: argparse.Namespace) -> int:
    config = Config.from_env()
    address = args.address or f"{config.host}:{config.ports.ingest}"
    files = find_images(args.paths)
    summary = Summary()
    with auth_client.channel(address, options=[("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]) as channel:
        stub = ingest_pb2_grpc.IngestServiceStub(channel)
        with tqdm(total=len(files), unit="img", desc="ingest", file=sys.stderr) as progress:
            size = max(1, args.batch_size)
            for start, batch in zip(range(0, len(files), size), batches(files, size)):
                try:
                    send_batch_within_rate_limit(stub, batch, summary, progress)
                except grpc.RpcError as error:
                    progress.close()
                    print(f"ingest service at {address} failed: {error.code().name}: {error.details()}",
                          file=sys.stderr)
                    # This batch's images and every later one's were never confirmed stored: failures.
                    unconfirmed = files[start:]
                    summary.images += len(unconfirmed)
                    summary.failures += [(str(path), f"not ingested: the service failed ({error.code().name}); "
                                                     "run again (images already stored are skipped as duplicates)")
                                         for path in unconfirmed]
                    print(summary.table())
                    return 2
                progress.update(len(batch))
                progress.set_postfix(faces=summary.faces, failed=len(summary.failures))
    if args.face_ids and summary.stored_faces:
        print(summary.face_listing() + "\n")
    print(summary.table())
    return 1 if summary.failures else 0
