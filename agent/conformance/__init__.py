"""Tender conformance run for any CNS card (§5.2.1.2): ``checks.run`` over a transport, the report
as JSON and as self-contained HTML (``report``), OpenSC's view of the card (``opensc``).

Used by the agent's local API (``agent.api.conformance``) and ``cns-agent conformance``.
Imports ``agent.card`` only (and the standard library, ``cryptography``).
"""
