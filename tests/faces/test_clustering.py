"""Suggested people (visage.clustering) on real dlib embeddings of the shared
photos and on synthetic piles large enough to be partitioned."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from visage import clustering

PEOPLE = ["amy", "bernadette", "howard", "leonard", "penny", "raj", "sheldon", "stuart"]


@pytest.fixture(scope="module")
def bbt(pipeline, faces_dir) -> tuple[list[str], np.ndarray]:
    """(person, embedding) of every bbt crop: 8 people x 5 faces."""
    people, embeddings = [], []
    for person in PEOPLE:
        for path in sorted((faces_dir / "bbt" / person).iterdir()):
            found = pipeline.analyze(path.read_bytes()).faces
            people.append(person)
            embeddings.append(found[0].embedding)
    return people, np.stack(embeddings)


def groups_by_person(people: list[str], labels: np.ndarray) -> dict[int, Counter]:
    found: dict[int, Counter] = {}
    for person, label in zip(people, labels):
        if label >= 0:
            found.setdefault(int(label), Counter())[person] += 1
    return found


@pytest.mark.parametrize("how_many", [2, 4, 8])
def test_a_few_people_each_get_one_pure_group(bbt, how_many):
    """Few people and nothing else (a pile HDBSCAN alone returns as one group)."""
    people, embeddings = bbt
    rows = [i for i, person in enumerate(people) if person in PEOPLE[:how_many]]
    labels = clustering.cluster_embeddings(embeddings[rows])
    groups = groups_by_person([people[i] for i in rows], labels)
    assert all(len(members) == 1 for members in groups.values()), groups  # pure
    largest = {person: max((g[person] for g in groups.values()), default=0) for person in PEOPLE[:how_many]}
    assert sum(largest.values()) >= 0.85 * len(rows), groups  # nearly complete


def test_clusters_rank_by_size_and_order_members_by_typicality(bbt):
    people, embeddings = bbt
    rows = [i for i, person in enumerate(people) if person in ("amy", "raj")][:8]  # 5 amy, 3 raj
    face_ids = [f"face-{i}" for i in rows]
    found = clustering.clusters(face_ids, embeddings[rows])
    assert [len(cluster.members) for cluster in found] == sorted((len(c.members) for c in found), reverse=True)
    for cluster in found:
        centre = embeddings[rows][cluster.members].mean(axis=0)
        distances = np.linalg.norm(embeddings[rows][cluster.members] - centre, axis=1)
        assert list(distances) == sorted(distances) and 0 <= cluster.quality <= 1
    again = clustering.clusters(face_ids, embeddings[rows])
    assert [c.cluster_id for c in again] == [c.cluster_id for c in found]  # stable ids


def test_too_few_faces_make_no_group():
    assert clustering.clusters([], np.zeros((0, 128), np.float32)) == []
    assert clustering.clusters(["a"], np.zeros((1, 128), np.float32)) == []


def test_a_large_pile_is_partitioned_and_people_stay_whole():
    rng = np.random.default_rng(4)
    centres = rng.normal(0, 0.0625, (120, 128))
    truth = np.repeat(np.arange(120), 30)
    embeddings = (centres[truth] + rng.normal(0, 0.025, (len(truth), 128))).astype(np.float32)
    assert len(embeddings) > 2 * clustering.PARTITION_SIZE  # the partitioned path
    labels = clustering.cluster_embeddings(embeddings)
    groups = groups_by_person([str(t) for t in truth], labels)
    assert all(len(members) == 1 for members in groups.values())
    assert len(groups) == 120
