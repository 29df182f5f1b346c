"""Certificate lifecycle and PIN management on the local API (mixed into ``AgentLocalService``).

Imports ``agent.ops``, ``agent.card.errors``, ``proto``.
"""
from __future__ import annotations


class LifecycleHandlers:
    """gRPC handlers for certificate status changes and PIN change/unblock."""
