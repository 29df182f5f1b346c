"""``cnsctl release``: central IT builds, signs and publishes token releases and agent builds (issues 14, 18).

    cnsctl release init --repo DIR --offline-keys DIR --online-keys DIR [--root-keys N --root-threshold K]
                        [--targets-keys N --targets-threshold K]
    cnsctl release add --repo DIR RELEASE.toml                       (a token release: model, version, components)
    cnsctl release add --repo DIR --agent BINARY --agent-version V [--platform linux-x86_64]
    cnsctl release sign --repo DIR --keys OFFLINE_DIR                (root/targets keys; mount them only to sign)
    cnsctl release publish --repo DIR --online-keys DIR              (snapshot + timestamp; also the periodic refresh)
    cnsctl release rotate --repo DIR --role ROLE --offline-keys DIR --online-keys DIR [--keys N --threshold K]
    cnsctl release list --repo DIR

Works on a local repository folder and needs no personalizer connection (no ``--config``): the
folder's ``served/`` is what any plain HTTP server publishes. Errors are one line (``cnsctl: ...``).
Imports ``personalizer.releases`` only.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from personalizer.releases import keys as keymod
from personalizer.releases.repository import ReleaseError, ReleaseRepo

ERRORS = (ReleaseError, keymod.KeyFileError)


def _init(opts) -> dict:
    repo = ReleaseRepo.init(opts.repo, opts.offline_keys, opts.online_keys, root_keys=opts.root_keys,
                            root_threshold=opts.root_threshold, targets_keys=opts.targets_keys,
                            targets_threshold=opts.targets_threshold)
    return {"repository": str(repo.root), "serve": str(repo.served), "trusted_root": str(repo.meta_dir / "1.root.json"),
            "next": f"keep {opts.offline_keys} offline; give agents {repo.meta_dir / '1.root.json'} as their trusted root"}


def _add(opts) -> dict:
    repo = ReleaseRepo(opts.repo)
    if opts.agent:
        if opts.release or not opts.agent_version:
            raise ReleaseError("--agent needs --agent-version and no RELEASE.toml")
        target = repo.add_agent(opts.agent, opts.agent_version, opts.platform)
        out = {"staged": target}
    else:
        if not opts.release:
            raise ReleaseError("give RELEASE.toml (a token release) or --agent BINARY --agent-version V")
        rel = repo.add_token_release(opts.release)
        out = {"staged": f"{rel.model} {rel.version}", "components": {c.name: c.version for c in rel.components}}
    out["next"] = f"cnsctl release sign --repo {opts.repo} --keys OFFLINE_KEYS"
    return out


def _sign(opts) -> dict:
    reports = ReleaseRepo(opts.repo).sign(opts.keys)
    done = all(r.signatures >= r.threshold for r in reports)
    return {"signatures": {r.role: f"{r.signatures}/{r.threshold} (version {r.version})" for r in reports},
            "next": f"cnsctl release publish --repo {opts.repo} --online-keys ONLINE_KEYS" if done else
            "more signatures are needed: sign again with the other key holders' folders"}


def _publish(opts) -> dict:
    return {"published": ReleaseRepo(opts.repo).publish(opts.online_keys)}


def _rotate(opts) -> dict:
    paths = ReleaseRepo(opts.repo).rotate(opts.role, opts.offline_keys, opts.online_keys, keys=opts.keys,
                                          threshold=opts.threshold)
    return {"new_keys": [str(p) for p in paths], "next": f"cnsctl release sign --repo {opts.repo} --keys OFFLINE_KEYS (old and new "
                                          "root keys), then publish"}


def _list(opts) -> dict:
    repo = ReleaseRepo(opts.repo)
    return {"releases": repo.list(), "expires": repo.expiries()}


def add_parser(sub) -> None:
    rp = sub.add_parser("release", help="token releases and agent builds over TUF (no --config needed)")
    rsub = rp.add_subparsers(dest="release_command", required=True)

    def cmd(name, func, text):
        p = rsub.add_parser(name, help=text)
        p.add_argument("--repo", type=Path, required=True, help="the release repository folder")
        p.set_defaults(func=func, offline=True)
        return p

    p = cmd("init", _init, "create a repository and its keys")
    p.add_argument("--offline-keys", type=Path, required=True, help="folder for root and targets keys (removable)")
    p.add_argument("--online-keys", type=Path, required=True, help="folder for snapshot and timestamp keys")
    for role in ("root", "targets"):
        p.add_argument(f"--{role}-keys", type=int, default=1, help=f"number of {role} keys")
        p.add_argument(f"--{role}-threshold", type=int, default=1, help=f"{role} signatures required")
    p = cmd("add", _add, "stage a token release (RELEASE.toml) or an agent build (--agent)")
    p.add_argument("release", nargs="?", type=Path, help="the release TOML (model, version, [components.*])")
    p.add_argument("--agent", type=Path, help="an agent one-file build")
    p.add_argument("--agent-version", help="its version, e.g. 0.2.0")
    p.add_argument("--platform", default="linux-x86_64", help="its platform (default linux-x86_64)")
    p = cmd("sign", _sign, "sign what is staged with the offline keys in a folder")
    p.add_argument("--keys", type=Path, required=True, help="folder of offline keys")
    p = cmd("publish", _publish, "publish signed changes; new snapshot and timestamp")
    p.add_argument("--online-keys", type=Path, required=True)
    p = cmd("rotate", _rotate, "replace a role's keys by a new key (stages a new root)")
    p.add_argument("--role", required=True, choices=["root", "targets", "snapshot", "timestamp"])
    p.add_argument("--keys", type=int, default=None, help="number of new keys (default: as many as now)")
    p.add_argument("--threshold", type=int, default=None, help="signatures required (default: as now)")
    p.add_argument("--offline-keys", type=Path, required=True)
    p.add_argument("--online-keys", type=Path, required=True)
    cmd("list", _list, "releases and agent builds, published and staged")


def run(opts) -> dict:
    return opts.func(opts)
