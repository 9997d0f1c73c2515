"""Fixtures for these tests live in :mod:`tests.kube.fixtures`, shared with tests/controller."""
