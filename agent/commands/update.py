"""``cns-agent update``: the agent's own updates and the token releases on offer, for holders and help desks.

    cns-agent update trust ROOT.json                 install the first trusted TUF root (from central IT)
    cns-agent update check [--model MODEL]           what is newer than what runs (and the model's releases)
    cns-agent update download                        fetch and verify the newest agent build (resumes)
    cns-agent update apply                           download, swap, health-check; roll back if it fails
    cns-agent update check|download|apply --token [--serial S] [--yes]
                                                     the same for the release of the USB token(s) the running
                                                     agent sees: the newest release of the token's model newer
                                                     than the one it runs; apply asks first on a terminal
                                                     (--yes: do not ask), then the agent installs it
                                                     (agent.ops.token_release: all components or none)
    cns-agent update pending|approve|decline --token [--serial S] [--release R]
                                                     the releases the running agent downloaded that wait for
                                                     the holder (``[updates] token_install = "ask"``), and the
                                                     holder's answer: approve (installed once the token is
                                                     plugged in and idle) or decline (asked again after
                                                     ``token_postpone_hours`` or for a newer release)

Where from: ``--config station.toml`` (its ``[updates]`` url and proxy) or ``--url URL [--proxy URL]``.
State (trusted metadata, partial downloads) in ``--state-dir`` (default ``$XDG_DATA_HOME/cns-agent/updates``),
the agent's builds in ``--install-dir`` (default ``$XDG_DATA_HOME/cns-agent/install``). Progress: a bar
on a terminal, or ``--json`` lines (``{"event": "progress", ...}`` then one ``{"event": "result", ...}``).
Offline: ``--url /media/stick/repo`` (the TUF repository copied to a folder) is checked the same way.
Every refusal is one line; nothing installed changes. Imports ``agent.updates`` and ``agent.api.client``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from agent.commands import CommandError, add_socket_option, socket_path


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
        if name != "trust":
            x.add_argument("--token", action="store_true", help="the release of the USB token(s), not the agent")
            x.add_argument("--serial", default="", help="with --token: only this token")
            add_socket_option(x)
        if name == "apply":
            x.add_argument("--yes", action="store_true", help="with --token: install without asking")
        x.set_defaults(func=run)
    for name, text in (("pending", "token releases downloaded that wait for the holder's answer"),
                       ("approve", "install the waiting token release once the token is plugged in and idle"),
                       ("decline", "not now: ask again later (or for a newer release)")):
        x = usub.add_parser(name, help=text)
        x.add_argument("--token", action="store_true", required=True, help="the release of the USB token(s)")
        x.add_argument("--serial", default="", help="only this token (needed when several wait)")
        if name != "pending":
            x.add_argument("--release", default="", help="the release you were shown (refused if another waits now)")
        x.add_argument("--json", action="store_true", help="JSON lines")
        add_socket_option(x)
        x.set_defaults(func=answer)


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
            if args.token:
                return _tokens(args, client, progress)
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


def _tokens(args: argparse.Namespace, client, progress: _Progress) -> int:
    """``--token``: offers for the tokens the running agent sees; download them; install them through it."""
    from agent.api.client import AgentCallError, AgentClient, AgentUnavailableError
    from agent.updates import token_releases as tr
    from proto.cns.v1 import agent_pb2 as pb

    try:
        with AgentClient(socket_path(args)) as agent:
            tokens = [t for t in agent.devices().tokens if t.mode == "runtime" and t.model_id
                      and (not args.serial or t.serial == args.serial)]
    except (AgentUnavailableError, AgentCallError) as exc:
        raise CommandError(str(exc)) from None
    if not tokens:
        raise CommandError(f"the agent sees no CNS token{' ' + args.serial if args.serial else ''}: plug it in "
                           "and run the command again")
    status = 0
    for t in tokens:
        installed = {"firmware": t.firmware, **{p: t.partitions[p].version for p in ("cdrom", "disk")
                                                  if p in t.partitions}}
        found = tr.offer(client, t.model_id, installed)
        row = {"serial": t.serial, "model": t.model_id, "release": t.release or None,
               "newer_release": found.release.version if found else None}
        if found is None or args.update_command == "check":
            _emit(row, args.json)
            continue
        paths = tr.fetch(client, found)
        if args.update_command == "download":
            _emit({**row, "downloaded": paths["manifest"]}, args.json)
            continue
        if not args.yes and not _confirmed(t.serial, found):
            _emit({**row, "state": "not installed", "message": "the holder said no"}, args.json)
            continue
        result = _install(args, pb.UpdateTokenRequest(serial=t.serial, target="release",
                                                      image_path=paths["manifest"]))
        _emit({**row, "state": result.state, "installed": result.version if result.state == "done" else None,
               "sent_bytes": result.sent_bytes, "message": result.message}, args.json)
        status = status or (0 if result.state == "done" else 1)
    return status


def _confirmed(serial: str, found) -> bool:
    """Ask the holder on a terminal; without one (a script), --yes is needed."""
    if not sys.stdin.isatty():
        raise CommandError("installing a token release asks the holder first: run it on a terminal, or add --yes")
    answer = input(f"Install {found.describe()} on token {serial} now? Keep it plugged in until it is done. [y/N] ")
    return answer.strip().lower() in ("y", "yes", "s", "si", "sì")


def _install(args: argparse.Namespace, request):
    from agent.commands.token import follow_update
    return follow_update(args, request, "the install")


def answer(args: argparse.Namespace) -> int:
    """``pending`` / ``approve`` / ``decline --token``: through the running agent, which holds the question."""
    from agent.api.client import AgentCallError, AgentClient, AgentUnavailableError
    from agent.commands.devices import approval_dict, describe_approval

    try:
        with AgentClient(socket_path(args)) as agent:
            if args.update_command == "pending":
                rows = [approval_dict(a) for a in agent.approvals().approvals
                        if not args.serial or a.token_serial == args.serial]
            else:
                rows = [approval_dict(agent.answer_approval(args.serial, args.update_command == "approve",
                                                            args.release))]
    except (AgentUnavailableError, AgentCallError) as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        for row in rows:
            print(json.dumps({"event": "result", **row}, sort_keys=True))
    elif not rows:
        print("no token release waits for an answer")
    for row in rows if not args.json else ():
        print(describe_approval(row))
    return 0
