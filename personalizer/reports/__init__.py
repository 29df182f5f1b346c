"""The records the tender asks of the CA every day and every month (§5.1.8, §6.2, §6.4.2, issue 19).

``bundle``: day and month arithmetic in the chambers' time zone, the read-only store, atomic
bundles (a directory renamed into place, with a SHA256SUMS file) and their rotation.
``archive``: the daily archive (CSV + JSON + JSON Schema). ``monthly``: the monthly figures (JSON).
``pdf``: the monthly report as a PDF with charts (matplotlib, reportlab; imported only there).
``scheduler``: the daemon's task that writes yesterday's archive each day and keeps the last N.

Reads the store only through ``personalizer.store.connect_readonly``; must not import grpc, proto,
the agent or the CA connectors.
"""
