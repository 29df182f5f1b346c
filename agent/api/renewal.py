"""Renewal on the local API: the ``Renew`` stream (mixed into ``AgentLocalService``).

Imports ``agent.ops``, ``agent.card.errors``, ``proto``.
"""
from __future__ import annotations


class RenewalHandlers:
    """gRPC handlers for renewal; ``self.operations`` is the agent's operations facade."""
