"""The agent's local API: ``AgentLocal`` over a per-user Unix socket.

``server`` (grpc.aio service + start), ``client`` (sync client for the CLI),
``rundir`` (socket location and its permission checks), ``convert`` (views → proto).
"""
