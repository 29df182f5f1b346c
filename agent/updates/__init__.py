"""The agent's update client: token releases and its own builds, from the TUF repository central IT publishes.

``fetcher`` (python-tuf ``FetcherInterface``: HTTP range requests, resume, per-chunk hash checks,
progress, the station's proxy), ``client`` (ngclient ``Updater`` over it: refresh, list, download
verified targets), ``selfupdate`` (swap the agent's own binary atomically, roll back when the new one
fails its health check). Installing a token release on the token is ``agent.ops.token_release`` (a plan
on the step engine over the images this package downloads).

Imports tuf, urllib3 and ``cns_spec.releases``; never grpc, proto, the personalizer or the emulator.
"""
