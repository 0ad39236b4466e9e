"""Provisions Visage on Azure Kubernetes Service."""
