"""Visage shared library: configuration, the store (SQLite or Cassandra), the event
log, the face pipeline and access to the generated gRPC code (``visage.v1``)."""
