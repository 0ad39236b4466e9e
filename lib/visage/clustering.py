"""Suggested people: groups of face embeddings that look like one person.

HDBSCAN (scikit-learn) finds the groups: it needs no number of people and
leaves faces that fit nowhere as noise, which suits a pile of strangers. It is
quadratic in the number of faces, so a large pile is first split by k-means
into partitions of about PARTITION_SIZE faces (a person's faces lie close
together, so they nearly always land in one partition); each partition is
clustered on its own, and groups of different partitions whose centres lie
within MERGE_DISTANCE are joined again. 100k faces take seconds, not hours.

Distances are euclidean on dlib's 128-d embeddings, where two faces of one
person are usually < 0.5 apart and of two people > 0.6.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import HDBSCAN

PARTITION_SIZE = 800
KMEANS_ROUNDS = 4
# Groups (e.g. of different partitions) whose centres are this close are one person.
MERGE_DISTANCE = 0.45
MAX_DEPTH = 6  # re-clustering a loose group stops after this many levels
# A group whose faces average this far from its centre scores quality 0.
LOOSE_DISTANCE = 0.6
# dlib's rule of thumb: further apart than this, two faces are two people.
SAME_PERSON_DISTANCE = 0.6
MIN_CLUSTER_SIZE = 2
# A face further than this from its group's centre is not that person.
MEMBER_DISTANCE = SAME_PERSON_DISTANCE / 2 + 0.05


@dataclass
class Cluster:
    cluster_id: str
    members: list[int]  # row indices into the embeddings, most typical first
    quality: float


def cluster_embeddings(embeddings: np.ndarray, seed: int = 0) -> np.ndarray:
    """One label per row (-1: in no group)."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    count = len(embeddings)
    if count < MIN_CLUSTER_SIZE:
        return np.full(count, -1)
    if count <= PARTITION_SIZE:
        return _merge_close_groups(embeddings, _hdbscan(embeddings))
    labels = np.full(count, -1)
    next_label = 0
    for rows in _partitions(embeddings, np.arange(count), np.random.default_rng(seed)):
        local = _hdbscan(embeddings[rows])
        grouped = local >= 0
        labels[rows[grouped]] = local[grouped] + next_label
        next_label += int(local.max()) + 1 if grouped.any() else 0
    return _merge_close_groups(embeddings, labels)


def _partitions(embeddings: np.ndarray, rows: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Splits rows into groups of about PARTITION_SIZE neighbours: a few rounds of
    k-means (plain numpy: one matrix product per round), then any group still
    much larger than PARTITION_SIZE is split again."""
    if len(rows) <= 2 * PARTITION_SIZE:
        return [rows]
    points = embeddings[rows]
    centres = points[rng.choice(len(rows), int(np.ceil(len(rows) / PARTITION_SIZE)), replace=False)]
    for _round in range(KMEANS_ROUNDS):
        nearest = _nearest_centre(points, centres)
        for k in range(len(centres)):
            members = points[nearest == k]
            if len(members):
                centres[k] = members.mean(axis=0)
    nearest = _nearest_centre(points, centres)
    groups = [rows[nearest == k] for k in range(len(centres))]
    if max(len(group) for group in groups) == len(rows):  # no split possible (identical points)
        return [rows]
    return [part for group in groups if len(group) for part in _partitions(embeddings, group, rng)]


def _nearest_centre(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.argmin((centres * centres).sum(axis=1)[None, :] - 2 * points @ centres.T, axis=1)


def _hdbscan(embeddings: np.ndarray) -> np.ndarray:
    """HDBSCAN, then each group loose enough to hold several people clustered again."""
    return _absorb_strays(embeddings, _hdbscan_tight(embeddings, allow_single_cluster=True, depth=0))


def _hdbscan_tight(embeddings: np.ndarray, allow_single_cluster: bool, depth: int) -> np.ndarray:
    """HDBSCAN labels where no face lies further than MEMBER_DISTANCE from its
    group's centre. A pile of few people can come back as one group (nothing
    denser around to tell them apart): such a group is clustered again on its
    own, and what still does not fit becomes noise."""
    count = len(embeddings)
    if count < MIN_CLUSTER_SIZE:
        return np.full(count, -1)
    found = HDBSCAN(min_cluster_size=MIN_CLUSTER_SIZE, min_samples=1, copy=True,
                    allow_single_cluster=allow_single_cluster).fit_predict(embeddings)
    labels = np.full(count, -1)
    next_label = 0
    for group in np.unique(found[found >= 0]):
        rows = np.flatnonzero(found == group)
        distances = np.linalg.norm(embeddings[rows] - embeddings[rows].mean(axis=0), axis=1)
        if distances.max() > MEMBER_DISTANCE and len(rows) > MIN_CLUSTER_SIZE and depth < MAX_DEPTH:
            inner = _hdbscan_tight(embeddings[rows], allow_single_cluster=False, depth=depth + 1)
            if (inner >= 0).any():
                labels[rows[inner >= 0]] = inner[inner >= 0] + next_label
                next_label += int(inner.max()) + 1
                continue
        members = rows[distances <= MEMBER_DISTANCE]
        if len(members) >= MIN_CLUSTER_SIZE:
            labels[members] = next_label
            next_label += 1
    return labels


def _absorb_strays(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """HDBSCAN leaves a face as noise when its density differs from its group's
    (common in small piles): a stray close enough to a group's centre joins it."""
    groups = np.unique(labels[labels >= 0])
    strays = np.flatnonzero(labels < 0)
    if not len(groups) or not len(strays):
        return labels
    centres = np.stack([embeddings[labels == group].mean(axis=0) for group in groups])
    distances = np.linalg.norm(embeddings[strays, None, :] - centres[None, :, :], axis=2)
    nearest = distances.argmin(axis=1)
    close = distances[np.arange(len(strays)), nearest] <= MEMBER_DISTANCE
    labels = labels.copy()
    labels[strays[close]] = groups[nearest[close]]
    return labels


def _merge_close_groups(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Joins groups (from different partitions) whose centres are within MERGE_DISTANCE."""
    groups = np.unique(labels[labels >= 0])
    if len(groups) < 2:
        return labels
    centres = np.stack([embeddings[labels == group].mean(axis=0) for group in groups])
    parent = list(range(len(groups)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    squared = (centres * centres).sum(axis=1)
    for start in range(0, len(groups), 1024):  # bounded memory for many groups
        block = centres[start:start + 1024]
        distances = squared[start:start + 1024, None] + squared[None, :] - 2 * block @ centres.T
        for i, j in zip(*np.nonzero(distances < MERGE_DISTANCE ** 2)):
            if start + i < j:
                parent[root(start + i)] = root(j)
    remap = {group: groups[root(i)] for i, group in enumerate(groups)}
    return np.array([remap.get(label, -1) for label in labels])


def clusters(face_ids: list[str], embeddings: np.ndarray, seed: int = 0) -> list[Cluster]:
    """The groups among these faces, largest first, each with its members by
    closeness to the centre and a quality score."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    labels = cluster_embeddings(embeddings, seed)
    order = np.argsort(labels, kind="stable")
    boundaries = np.flatnonzero(np.diff(labels[order])) + 1
    found = []
    for rows in np.split(order, boundaries):
        if len(rows) == 0 or labels[rows[0]] < 0:
            continue
        distances = np.linalg.norm(embeddings[rows] - embeddings[rows].mean(axis=0), axis=1)
        members = rows[np.argsort(distances, kind="stable")].tolist()
        quality = float(np.clip(1 - distances.mean() / LOOSE_DISTANCE, 0, 1))
        found.append(Cluster(_cluster_id(face_ids, rows), members, round(quality, 3)))
    found.sort(key=lambda cluster: (-len(cluster.members), -cluster.quality, cluster.cluster_id))
    return found


def _cluster_id(face_ids: list[str], rows: np.ndarray) -> str:
    """Named after the group's smallest face id: stable while that face stays in it."""
    first = min(face_ids[row] for row in rows)
    return "c" + hashlib.sha256(first.encode()).hexdigest()[:15]
