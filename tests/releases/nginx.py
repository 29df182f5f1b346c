"""A real nginx (Debian's nginx-light, installed by scripts/setup) serving a folder on loopback.

No systemd and no root needed: nginx runs in the foreground from a config written into a temp
folder (``master_process off``: one process, as the current user, so it reads the test's 0700 temp
folders). The access log records status, Range header and body bytes of every request, which the
tests read to prove what was transferred.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    log_format ranges '$status "$request" range="$http_range" sent=$body_bytes_sent';
    access_log {prefix}/access.log ranges;
    client_body_temp_path {prefix}/tmp-body;
    proxy_temp_path {prefix}/tmp-proxy;
    fastcgi_temp_path {prefix}/tmp-fastcgi;
    uwsgi_temp_path {prefix}/tmp-uwsgi;
    scgi_temp_path {prefix}/tmp-scgi;
    default_type application/octet-stream;
    sendfile off;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ }}
    }}
}}
"""


def missing() -> list[str]:
    return [] if Path(NGINX).exists() else ["nginx (apt-get install nginx-light)"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Nginx:
    proc: subprocess.Popen
    prefix: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> list[str]:
        p = self.prefix / "access.log"
        return p.read_text().splitlines() if p.exists() else []

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start(root: Path, prefix: Path) -> Nginx:
    prefix.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        port = _free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(CONF.format(prefix=prefix, port=port, root=root))
        proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=open(prefix / "stderr.log", "w"))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return Nginx(proc, prefix, port)
            except OSError:
                time.sleep(0.05)
        proc.kill()
        proc.wait()
    raise RuntimeError(f"nginx did not start: {(prefix / 'stderr.log').read_text()} {(prefix / 'error.log').read_text() if (prefix / 'error.log').exists() else ''}")
