"""Deployment (installed as udaseg.export)."""
