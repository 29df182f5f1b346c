"""Token releases and agent builds as a TUF repository (issue 14, issue 18 item 5).

``keys`` makes and loads the signing keys (root and targets offline, snapshot and timestamp
online); ``repository`` builds, signs and publishes the metadata with python-tuf's Metadata API
into a folder any plain HTTP file server can serve (``served/``). ``cnsctl release``
(personalizer.cnsctl_release) is the command line over it.

Imports tuf, securesystemslib, cryptography and ``cns_spec.releases`` (the manifest format the
agent reads); never grpc, proto, the store or the agent.
"""
