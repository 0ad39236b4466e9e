"""Visage gateway service."""
