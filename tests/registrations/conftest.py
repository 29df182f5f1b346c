"""The personalizer tests' session deployment and daemon, reused (the deployment now has an IR identity)."""
from tests.personalizer.conftest import daemon, deployment, tls_dir  # noqa: F401  (session fixtures)
from tests.ops.conftest import ops_daemon, ops_deployment, station  # noqa: F401,E402  (the agent's daemon)
