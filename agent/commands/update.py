"""``cns-agent update``: the agent's own updates and the token releases on offer, for holders and help desks.

    cns-agent update trust ROOT.json                 install the first trusted TUF root (from central IT)
    cns-agent update check [--model MODEL]           what is newer than what runs (and the model's releases)
    cns-agent update download                        fetch and verify the newest agent build (resumes)
    cns-agent update apply                           download, swap, health-check; roll back if it fails

Where from: ``--config station.toml`` (its ``[updates]`` url and proxy) or ``--url URL [--proxy URL]``.
State (trusted metadata, partial downloads) in ``--state-dir`` (default ``$XDG_DATA_HOME/cns-agent/updates``),
the agent's builds in ``--install-dir`` (default ``$XDG_DATA_HOME/cns-agent/install``). Progress: a bar
on a terminal, or ``--json`` lines (``{"event": "progress", ...}`` then one ``{"event": "result", ...}``).
Every refusal is one line; nothing installed changes. Imports ``agent.updates``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from agent.commands import CommandError


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "cns-agent"


def register(sub) -> None:
    p = sub.add_parser("update", help="the agent's own updates and token releases (TUF)")
    usub = p.add_subparsers(dest="update_command", required=True, metavar="ACTION")
    for name, text in (("trust", "install the first trusted root.json central IT gave you"),
                       ("check", "what is newer than what runs"),
                       ("download", "download and verify the newest agent build"),
                       ("apply", "install the newest agent build; back to the old one if it fails")):
        x = usub.add_parser(name, help=text)
        if name == "trust":
            x.add_argument("root", type=Path, help="root.json")
        if name == "check":
            x.add_argument("--model", help="also list the token releases of this token model")
        x.add_argument("--config", type=Path, help="station configuration with an [updates] section")
        x.add_argument("--url", help="the release repository's URL (instead of --config)")
        x.add_argument("--proxy", help="http://HOST:PORT proxy (instead of the config's)")
        x.add_argument("--state-dir", type=Path, default=None)
        x.add_argument("--install-dir", type=Path, default=None)
        x.add_argument("--platform", default=None, help="the build's platform (default: this machine's)")
        x.add_argument("--json", action="store_true", help="JSON lines")
        x.set_defaults(func=run)


def _write_advice(exc: OSError) -> str:
    """What to do about a write that failed, by its cause."""
    import errno
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space, or choose another --state-dir and --install-dir"
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "that folder is not writable for you: choose another --state-dir and --install-dir"
    return "check that folder, or choose another --state-dir and --install-dir"


def _source(args) -> tuple[str, str | None]:
    url, proxy = args.url, args.proxy
    if args.config:
        import station_config
        try:
            cfg = station_config.load(args.config)
        except station_config.StationConfigError as exc:
            raise CommandError(str(exc)) from None
        if cfg.updates is None and not url:
            raise CommandError(f"{cfg.source}: updates: missing section; add [updates] url = \"http://...\"")
        if cfg.updates:
            url, proxy = url or cfg.updates.url, proxy or cfg.updates.proxy
    if not url:
        raise CommandError("no release repository: give --config station.toml (with [updates]) or --url URL")
    return url, proxy


class _Progress:
    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.bar = None
        self.task = None

    def __call__(self, done: int, total: int) -> None:
        if self.as_json:
            print(json.dumps({"event": "progress", "done": done, "total": total}), flush=True)
            return
        if not sys.stderr.isatty():
            return
        if self.bar is None:
            from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
            from rich.console import Console
            self.bar = Progress("download", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("download", total=total)
        self.bar.update(self.task, completed=done, total=total)
        if done >= total:
            self.bar.stop()
            self.bar = None


def run(args: argparse.Namespace) -> int:
    from agent.updates.client import UpdateClient, UpdateError, trust_root
    from agent.updates.selfupdate import SelfUpdater
    from agent.commands.run import _version

    state = args.state_dir or _data_home() / "updates"
    install = args.install_dir or _data_home() / "install"
    progress = _Progress(args.json)
    try:
        if args.update_command == "trust":
            try:
                raw = args.root.read_bytes()
            except OSError as exc:
                raise CommandError(f"{args.root}: cannot read it ({exc.strerror}); give the root.json central IT "
                                   "published") from None
            trust_root(state, raw)
            result = {"trusted_root": str(state / "metadata" / "root.json")}
        else:
            url, proxy = _source(args)
            client = UpdateClient(state, url, proxy=proxy, progress=progress)
            up = SelfUpdater(install, client, args.platform)
            if args.update_command == "check":
                found = up.available()
                result = {"agent": up.current_version() or _version(),
                          "newer_agent": found[0] if found else None}
                if args.model:
                    result["releases"] = [{"version": r.version, "components": r.versions(),
                                           "min_agent_version": r.min_agent_version}
                                          for r in client.token_releases(args.model)]
            elif args.update_command == "download":
                found = up.available()
                result = {"downloaded": str(up.download(*found)), "version": found[0]} if found else \
                    {"downloaded": None, "version": up.current_version()}
            else:
                out = up.apply()
                result = {"action": out.action, "version": out.version, "detail": out.detail}
                if out.action == "rolled-back":
                    _emit(result, args.json)
                    return 1
    except UpdateError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot write {exc.filename or state}: {exc.strerror or exc}; nothing was changed "
                           f"({_write_advice(exc)})") from None
    _emit(result, args.json)
    return 0


def _emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"event": "result", **result}, sort_keys=True))
        return
    for k, v in result.items():
        if k == "releases":
            for r in v:
                print(f"release {r['version']:12} " + " ".join(f"{a}={b}" for a, b in r["components"].items())
                      + f"  (agent >= {r['min_agent_version']})")
            continue
        print(f"{k:14} {v if v not in (None, '') else '-'}")
