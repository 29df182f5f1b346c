"""The personalizer tests' session deployment and daemon, reused (the deployment now has an IR identity)."""
from tests.personalizer.conftest import daemon, deployment, tls_dir  # noqa: F401  (session fixtures)
