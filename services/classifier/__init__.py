"""Visage classifier service."""
