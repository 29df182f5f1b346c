"""Central IT's read-only status page (issue 15 item 5): ``page`` renders it, ``server`` serves it over mTLS."""
