"""Visage query service."""
