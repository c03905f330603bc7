"""The mesh tests' ``federation`` fixture: real in-process nodes, for the end-to-end tests."""

from tests.mesh.conftest import federation

__all__ = ["federation"]
