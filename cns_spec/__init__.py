"""Formats and rules the agent and the personalizer must agree on, in one place.

Owns: the EF_DatiPersonali codec (``dati_personali``), the codice fiscale rules
(``codice_fiscale``), the character policy and length bounds of holder data and
certificate attributes (``text``, ``holder``), the enrollment code (``enrollment_code``), the RFC 5280
revocation reasons (``reasons``), the CA profile names and keyset → profile map (``profiles``), the request-state
vocabulary (``requests``), the validity / device-life date arithmetic (``validity``) and what a
holder's card signs to get card administration in a self-renewal (``card_admin_proof``).

Pure: no I/O, no grpc, no proto; imports only the standard library and nothing
of ours. Both ``agent`` and ``personalizer`` import it (DESIGN: "share only
``proto`` and ``cns_spec``"); neither keeps a copy of what is here.

Also owns the JSON log line both programs write (``logs``: a formatter, no handler).
"""
