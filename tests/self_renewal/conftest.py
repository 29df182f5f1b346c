"""Fixtures of tests/broker (in-process broker + relay + embedded CA) reused for self-renewal."""
from tests.broker.conftest import deployment, make_env  # noqa: F401  (pytest fixtures)
