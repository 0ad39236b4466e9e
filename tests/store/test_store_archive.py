"""Backup and restore (visage.store.archive) on both backends, with the shared photos: the
SQLite -> Cassandra -> SQLite migration answers every read the same; a backup taken during a
labelling burst restores every label with its event; an erased image stays erased; a damaged
archive writes nothing; a restore refuses a store with data and finishes after an interruption."""
from __future__ import annotations

import dataclasses
import io
import threading
import time
from pathlib import Path

import pytest

from archive_scene import fill, photo_faces, snapshot, train
from visage.store import archive
from visage.store.base import Store
from visage.store.records import LabelRecord
from visage.store.sqlite import SqliteStore
from visage.v1 import resources_pb2 as pb

HANG_GUARD_S = 300


def fresh_sqlite(tmp_path: Path, name: str) -> SqliteStore:
    store = SqliteStore(tmp_path / name / "visage.db")
    store.migrate()
    return store


def backup_bytes(store: Store) -> bytes:
    return b"".join(archive.backup(store))


def opener(data: bytes):
    return lambda: io.BytesIO(data)


def sealed(plain: bytes, key: bytes) -> bytes:
    return b"".join(archive.seal([plain], key))


def opener_sealed(data: bytes, key: bytes):
    return lambda: archive._ChunkReader(archive.unseal(io.BytesIO(data), key))


def nothing_written(store: Store) -> bool:
    return archive.is_empty(store) and store.read_events("", 10) == [] and store.get_meta(
        archive.RESTORE_ARCHIVE_KEY) is None and store.get_meta("erasure.ledger") is None


# ---- the migration path ---------------------------------------------------------------------
def test_sqlite_to_cassandra_to_sqlite_answers_every_read_the_same(tmp_path, faces_dir, cassandra_store):
    source = fresh_sqlite(tmp_path, "source")
    scene = fill(source, faces_dir)
    first = backup_bytes(source)

    counts = archive.restore(cassandra_store, opener(first))
    # The photos but the erased one, and the photo a face was drawn on.
    assert counts["images"] == len(scene["photos"]) and counts["labels"] == len(list(source.iter_labels()))
    assert snapshot(cassandra_store) == snapshot(source)
    assert cassandra_store.get_face(scene["drawn"].face_id).drawn_by == "dave"

    back = fresh_sqlite(tmp_path, "back")
    archive.restore(back, opener(backup_bytes(cassandra_store)))
    expected = snapshot(source)
    assert snapshot(back) == expected
    assert expected["active"] is not None and expected["jobs"] and scene["erased"] not in {
        i.image_id for i in expected["images"]}

    # The next label trains as before: the same label on both sides gives the same label set
    # and the same model, and the new version number follows the restored ones.
    from visage_trainer.training import read_label_set

    person, _image, _content, faces = scene["photos"][2]
    results = []
    for store in (source, back):
        store.put_label(LabelRecord(faces[0].face_id, scene["personas"][person].persona_id, pb.VERDICT_BELONGS,
                                    "dave", 1_800_000_000.0))
        version = train(store, "after-restore")
        record = store.get_model_version(version)
        results.append((read_label_set(store).sha256, version, record.state, record.persona_ids,
                        record.unknown_threshold, record.metrics, store.active_model_version().version))
    assert results[0] == results[1] and results[0][1] == 3


def test_restore_resets_the_trainer_cursor_to_the_restored_log():
    from visage_trainer.server import CURSOR_META_KEY
    assert CURSOR_META_KEY in archive.CONSUMER_CURSOR_KEYS


# ---- consistency: a labelling burst during the backup -----------------------------------------
def test_backup_during_a_labelling_burst_keeps_every_label_with_its_event(store, tmp_path, faces_dir):
    photos = photo_faces(faces_dir, per_person=3)
    for _person, image, content, faces in photos:
        store.put_image(image, content, faces)
    personas = [store.create_persona(name) for name in ("Amy", "Howard", "Leonard")]
    face_ids = [faces[0].face_id for *_rest, faces in photos]
    done, stop, errors = [0], threading.Event(), []
    progressed = threading.Condition()

    def label_burst():
        try:
            while not stop.is_set():
                n = done[0]
                face, persona = face_ids[n % len(face_ids)], personas[n % 3].persona_id
                if n % 7 == 6:
                    store.delete_label(face, personas[(n - 1) % 3].persona_id)
                else:
                    store.put_label(LabelRecord(face, persona, pb.VERDICT_BELONGS if n % 5 else pb.VERDICT_NOT_BELONGS,
                                                f"labeller-{n % 2}"))
                with progressed:
                    done[0] += 1
                    progressed.notify_all()
        except Exception as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    def wait_for(count: int) -> None:
        with progressed:
            assert progressed.wait_for(lambda: done[0] >= count or errors, timeout=HANG_GUARD_S), "burst stalled"

    burst = threading.Thread(target=label_burst, daemon=True)
    burst.start()
    wait_for(10)
    chunks = archive.backup(store)
    data = [next(chunks)]  # the backup has started (its start cursor is taken)
    wait_for(done[0] + 25)  # labels land while it runs
    data.append(next(chunks))
    wait_for(done[0] + 25)
    data += list(chunks)
    stop.set()
    burst.join(HANG_GUARD_S)
    assert not errors

    target = fresh_sqlite(tmp_path, "target")
    archive.restore(target, opener(b"".join(data)))
    rows = {(label.face_id, label.persona_id): label.verdict for label in target.iter_labels()}
    standing: dict[tuple[str, str], int] = {}
    for event in target.read_events("", 100_000):
        pair = (event.subject, event.attributes.get("persona_id"))
        if event.type == pb.EVENT_TYPE_FACE_UNLABELLED:
            standing.pop(pair, None)
        elif event.type == pb.EVENT_TYPE_FACE_LABELLED:
            verdict = pb.Verdict.Value(event.attributes["verdict"])
            if verdict == pb.VERDICT_BELONGS:  # a BELONGS label ends the face's other BELONGS label
                standing = {p: v for p, v in standing.items() if p[0] != pair[0] or v != pb.VERDICT_BELONGS}
            standing[pair] = verdict
    assert len(standing) > 10 and rows == standing
    assert len([e for e in target.read_events("", 100_000) if e.type == pb.EVENT_TYPE_FACE_LABELLED]) >= 50


# ---- erasure ---------------------------------------------------------------------------------
def test_an_erased_image_stays_erased_after_restoring_an_older_archive(store, tmp_path, faces_dir):
    photos = photo_faces(faces_dir, people=("penny", "sheldon"), per_person=2)
    for _person, image, content, faces in photos:
        store.put_image(image, content, faces)
    penny = store.create_persona("Penny")
    victim = photos[0]
    store.put_label(LabelRecord(victim[3][0].face_id, penny.persona_id, pb.VERDICT_BELONGS))
    older = backup_bytes(store)
    store.delete_image(victim[1].image_id)
    newer = backup_bytes(store)

    def erased_stays_out(target: Store) -> None:
        assert target.get_image(victim[1].image_id) is None and target.get_image_content(victim[1].image_id) is None
        assert target.get_faces([victim[3][0].face_id]) == [] and target.count_images() == len(photos) - 1
        assert target.labels_of_persona(penny.persona_id, pb.VERDICT_BELONGS) == []
        assert not any(e.subject in (victim[1].image_id, victim[3][0].face_id)
                       for e in target.read_events("", 10_000) if e.type != pb.EVENT_TYPE_ERASED)

    # Disaster: the store is gone; the older archive is restored with the newer one's ledger.
    empty = fresh_sqlite(tmp_path, "empty")
    archive.restore(empty, opener(older), erasures_from=[opener(newer)])
    erased_stays_out(empty)
    # Rolling the same store back to the older archive: the store's own ledger applies.
    archive.restore(store, opener(older), force=True)
    erased_stays_out(store)


# ---- damaged archives ------------------------------------------------------------------------
def test_a_truncated_or_altered_archive_is_refused_and_writes_nothing(store, tmp_path, faces_dir, monkeypatch):
    monkeypatch.setattr(archive, "FRAME_BYTES", 64 * 1024)  # several frames of the shared photos
    source = fresh_sqlite(tmp_path, "source")
    fill(source, faces_dir)
    key = archive.new_key(tmp_path / "backup.key")
    plain = backup_bytes(source)
    good = sealed(plain, key)
    middle = len(good) // 2
    damaged = {
        "a flipped byte": good[:middle] + bytes([good[middle] ^ 1]) + good[middle + 1:],
        "cut in a frame": good[:middle],
        "cut after a frame": good[:len(archive.ENCRYPTED_MAGIC) + 16 + 4 + archive.FRAME_BYTES + 16],
        "the last frame dropped": good[:len(good) - 4 - 16 - (len(plain) % archive.FRAME_BYTES)],
        "data appended": good + b"more",
    }
    assert len(plain) > 3 * archive.FRAME_BYTES
    for what, data in damaged.items():
        with pytest.raises(archive.ArchiveError) as refused:
            archive.restore(store, opener_sealed(data, key))
        assert "truncated" in str(refused.value) or "altered" in str(refused.value), what
        assert nothing_written(store), what
    with pytest.raises(archive.ArchiveError, match="not its key"):
        archive.restore(store, opener_sealed(good, archive.new_key(tmp_path / "other.key")))
    for what, data in {"plain, a flipped byte": plain[:middle] + bytes([plain[middle] ^ 1]) + plain[middle + 1:],
                       "plain, cut": plain[:middle]}.items():
        with pytest.raises(archive.ArchiveError):
            archive.restore(store, opener(data))
        assert nothing_written(store), what
    archive.restore(store, opener_sealed(good, key))
    assert snapshot(store) == snapshot(source)


# ---- refusing, resuming ------------------------------------------------------------------------
def test_restore_refuses_a_store_with_data_and_finishes_after_an_interruption(store, tmp_path, faces_dir):
    source = fresh_sqlite(tmp_path, "source")
    fill(source, faces_dir)
    data = backup_bytes(source)
    occupied = fresh_sqlite(tmp_path, "occupied")
    occupied.create_persona("Someone")
    with pytest.raises(archive.StoreNotEmpty, match="--force"):
        archive.restore(occupied, opener(data))

    # Interrupted: the second read of the archive (the writing pass) stops half-way.
    opened = []

    def interrupted():
        opened.append(1)
        return io.BytesIO(data if len(opened) == 1 else data[:len(data) // 2])
    with pytest.raises(archive.ArchiveError, match="truncated"):
        archive.restore(store, interrupted)
    assert not archive.is_empty(store) and not store.get_meta(archive.RESTORE_DONE_KEY)

    archive.restore(store, opener(data))  # the same archive again: no --force needed, it finishes
    expected = snapshot(source)
    assert snapshot(store) == expected
    with pytest.raises(archive.StoreNotEmpty):  # finished: once more only when told
        archive.restore(store, opener(data))
    archive.restore(store, opener(data), force=True)  # and then nothing doubles
    assert snapshot(store) == expected


def test_restore_counts_events_so_a_rerun_after_a_crash_among_them_adds_none_twice(store, tmp_path, faces_dir,
                                                                                   monkeypatch):
    source = fresh_sqlite(tmp_path, "source")
    fill(source, faces_dir)
    data = backup_bytes(source)
    monkeypatch.setattr(archive, "EVENT_BATCH", 3)
    original, calls = type(store).restore_events, []

    def crash_on_third_batch(self, events):
        calls.append(len(events))
        if len(calls) == 3:
            raise ConnectionError("the process died here")
        return original(self, events)
    monkeypatch.setattr(type(store), "restore_events", crash_on_third_batch)
    with pytest.raises(ConnectionError):
        archive.restore(store, opener(data))
    monkeypatch.setattr(type(store), "restore_events", original)
    archive.restore(store, opener(data))
    assert snapshot(store)["events"] == snapshot(source)["events"]


def test_a_backup_carries_who_labelled_when(store, faces_dir):
    photos = photo_faces(faces_dir, people=("amy",), per_person=1)
    image, content, faces = photos[0][1:]
    store.put_image(image, content, faces)
    amy = store.create_persona("Amy")
    label = LabelRecord(faces[0].face_id, amy.persona_id, pb.VERDICT_BELONGS, "alice", 1_700_000_123.5)
    store.put_label(label)
    records = [fields for fields, _ in archive.read_records(io.BytesIO(backup_bytes(store)))]
    assert [r for r in records if r["kind"] == "label"] == [{"kind": "label", **dataclasses.asdict(label)}]
    assert time.time() - records[0]["create_time"] < HANG_GUARD_S
