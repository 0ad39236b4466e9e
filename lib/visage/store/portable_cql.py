"""The CQL that every Cassandra Visage runs on accepts: Apache Cassandra 3.11-5, Azure Managed
Instance for Apache Cassandra (open-source Cassandra: everything Apache Cassandra accepts) and
Azure Cosmos DB for Apache Cassandra, whose documented limits are the narrowest. Each rule
names the Cosmos DB documentation it comes from ("Apache Cassandra features supported by
Azure Cosmos DB for Apache Cassandra", "Lightweight transactions with conditions", "Service
quotas"). The Cassandra backend keeps to these; tests/store/test_portable_cql.py checks every
statement it sends (and every CQL literal in its source) against them.
"""
from __future__ import annotations

import re

# Cosmos DB speaks the CQL binary protocol v4 ("supported features": "CQL Binary Protocol v4").
PROTOCOL_VERSION = 4
# A keyspace (database) with shared throughput holds at most 25 tables (containers).
MAX_TABLES = 25

_DML = re.compile(r"^\s*(INSERT|UPDATE|DELETE)\b", re.IGNORECASE)
_CREATE_TABLE = re.compile(r"^\s*CREATE\s+TABLE\b", re.IGNORECASE)
_CONDITION = re.compile(r"\bIF\b(?P<condition>.*)$", re.IGNORECASE | re.DOTALL)
_EQUALITY = re.compile(r"^\s*\w+\s*=\s*(\?|'[^']*'|-?\d+(\.\d+)?|true|false)\s*$", re.IGNORECASE)
_TOKEN_ON_RIGHT = re.compile(r"[<>=]\s*token\s*\(", re.IGNORECASE)


def violations(cql: str) -> list[str]:
    """Why Cosmos DB (the narrowest of the three) would refuse this statement ([] if it would not)."""
    found = []
    if _DML.match(cql):
        found += _condition_violations(cql)
    if _CREATE_TABLE.match(cql) and re.search(r"\bSTATIC\b", cql, re.IGNORECASE):
        found.append("static column: conditions and assignments mixing static and regular columns are "
                     "refused by Cosmos DB (lightweight transactions), so the schema has none")
    if _TOKEN_ON_RIGHT.search(cql):
        found.append("token() on the right-hand side: Cosmos DB allows token(pk) only on the left of a WHERE")
    return found


def batch_violations(logged: bool, statements: list[str]) -> list[str]:
    """Why Cosmos DB would refuse a batch of these statements."""
    found = ["logged batch: Cosmos DB supports unlogged batches only"] if logged else []
    if any(_CONDITION.search(cql) for cql in statements if _DML.match(cql)):
        found.append("conditional statement in a batch: Cosmos DB refuses conditional batches")
    return found + [v for cql in statements for v in violations(cql)]


def _condition_violations(cql: str) -> list[str]:
    match = _CONDITION.search(cql)
    if match is None:
        return []
    condition = match["condition"].strip()
    if re.match(r"^DELETE\b", cql.strip(), re.IGNORECASE):
        return ["conditional delete: Cosmos DB refuses a row delete combined with an IF condition on "
                "tables created without its cell-level LWT flags (which Apache Cassandra does not know)"]
    if re.fullmatch(r"(NOT\s+)?EXISTS", condition, re.IGNORECASE):
        return []
    if all(_EQUALITY.match(part) for part in re.split(r"\bAND\b", condition, flags=re.IGNORECASE)):
        return []
    return [f"condition {condition!r}: only IF [NOT] EXISTS and equalities of regular columns are documented "
            "as supported by Cosmos DB (no IN, !=, <, >)"]


# ---- table options: Apache Cassandra and Managed Instance only -----------------------------------
# Cosmos DB keeps no SSTables: it "doesn't implement compaction" and "always does durable commits"
# (Cosmos DB for Apache Cassandra FAQ, "key differences"), so a delete there leaves no tombstoned copy
# for compaction to drop, and it refuses a non-zero gc_grace_seconds ("gc_grace_seconds value must be
# zero": glowroot/glowroot#921, #837, "CosmosDB Cassandra API service expects a zero value ... no notion
# of gc_grace_seconds or hinted handoff"). The options below are therefore sent only where the
# backend is Apache Cassandra (VISAGE_CASSANDRA_BACKEND=apache: self-run or Managed Instance).
BACKENDS = ("apache", "cosmos")


def erasure_table_options(grace_seconds: int) -> str:
    """WITH options of a table holding erasable content on Apache Cassandra: a compaction of an
    SSTable drops the rows a tombstone in ANY other SSTable deletes (provide_overlapping_tombstones,
    the mechanism of `nodetool garbagecollect`), an SSTable whose tombstones are droppable is
    compacted on its own once it is an hour old, and tombstones are droppable after `grace_seconds`."""
    return (f"gc_grace_seconds = {int(grace_seconds)} AND compaction = {{'class': 'SizeTieredCompactionStrategy', "
            "'provide_overlapping_tombstones': 'ROW', 'unchecked_tombstone_compaction': 'true', "
            "'tombstone_threshold': '0.05', 'tombstone_compaction_interval': '3600'}")
