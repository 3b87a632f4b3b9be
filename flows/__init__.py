"""Prefect flows: they only wire tasks together."""

from storage.paths import configure_environment

configure_environment()
