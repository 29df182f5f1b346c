"""What every platform's one-file cns-agent contains; exec'd by the cns-agent-<os>.spec files.

Kept in one place so the three spec files differ only in what the platform needs (an icon,
a console flag, codesigning identity). Inside: the agent and the packages it imports
(agent, proto, cns_spec, station_config, firmware_profiles minus its emulator), the card
models (firmware_profiles/cards/*.toml) and token models (tokens/*.toml), the distribution's metadata (for ``--version``),
and the third-party hooks of pyinstaller-hooks-contrib (grpcio, cryptography, pyscard).
Names PyInstaller's spec globals (Analysis, PYZ, EXE) that the spec's namespace provides.
"""
import os

from PyInstaller.utils.hooks import collect_data_files, collect_submodules, copy_metadata

ROOT = os.path.dirname(SPECPATH)  # noqa: F821 - provided by PyInstaller  # the repository

# the agent imports its command groups by name (agent.cli.COMMAND_MODULES): list every module
OURS = ["agent", "proto", "cns_spec", "station_config"]
hidden = [m for pkg in OURS for m in collect_submodules(pkg)]
hidden += [m for m in collect_submodules("firmware_profiles")
           if not m.startswith(("firmware_profiles.emulator", "firmware_profiles.usbemu"))]

# the card models and the USB token models (the agent's USB backend finds tokens by their ids)
datas = collect_data_files("firmware_profiles", includes=["cards/*.toml", "tokens/*.toml"])
datas += copy_metadata("cns-devices")

# never in the agent: the emulator (tests only), the personalizer and what only it uses
EXCLUDES = ["firmware_profiles.emulator", "firmware_profiles.usbemu", "personalizer", "matplotlib", "reportlab", "tkinter",
            "aiosqlite", "prometheus_client", "pytest"]


def build(name="cns-agent", console=True, icon=None, codesign_identity=None, entitlements_file=None,
          target_arch=None):
    a = Analysis(  # noqa: F821
        [os.path.join(SPECPATH, "entry.py")],  # noqa: F821
        pathex=[ROOT],
        hiddenimports=hidden,
        datas=datas,
        excludes=EXCLUDES,
        noarchive=False,
        optimize=0,
    )
    pyz = PYZ(a.pure)  # noqa: F821
    return EXE(  # noqa: F821
        pyz, a.scripts, a.binaries, a.datas, [],
        name=name,
        debug=False,
        strip=False,
        upx=False,              # no UPX: reproducible, and not flagged by antivirus on Windows
        runtime_tmpdir=None,
        console=console,
        icon=icon,
        codesign_identity=codesign_identity,
        entitlements_file=entitlements_file,
        target_arch=target_arch,
    )
