"""Visage trainer service."""
