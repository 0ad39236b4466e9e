"""Visage ingest service."""
