"""The Linux udev rule that lets the logged-in user reach a token's management and DFU interfaces.

The agent runs without admin rights. On Windows the management interface binds WinUSB by itself (Microsoft
OS 2.0 descriptors); on Linux the USB device node (usbfs, what pyusb/libusb opens) and, for the HID model,
its hidraw node are root's unless udev tags them ``uaccess``: systemd-logind then gives the user of the
active seat an ACL on them, and takes it away at logout or seat switch (the rule pcscd's libccid and
libfido2's packages ship for their devices). Central IT installs the file once per workstation image
(``/etc/udev/rules.d/70-cns-tokens.rules``, then ``udevadm control --reload``); the file is generated here
from the token models, both USB modes (runtime and DFU bootloader, which re-enumerates with its own
product id), so a model added to ``tokens/`` cannot be forgotten (a test compares the shipped file).

Imports the token models only.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from firmware_profiles.usbtoken.model import TokenModel

RULES_NAME = "70-cns-tokens.rules"   # before 73-seat-late.rules, where systemd applies the uaccess tag
SHIPPED = Path(__file__).resolve().parents[2] / "packaging" / "linux" / RULES_NAME


def udev_rules(models: Iterable[TokenModel]) -> str:
    """The rules file for ``models`` (sorted by id, so the output is stable)."""
    lines = [
        f"# {RULES_NAME}: CNS USB tokens reachable by the logged-in user (no admin), generated from",
        "# firmware_profiles/tokens/*.toml by firmware_profiles.usbtoken.udev; do not edit by hand.",
        "# Install: copy to /etc/udev/rules.d/, then `udevadm control --reload` (admin, once per image).",
        "",
    ]
    for m in sorted(models, key=lambda m: m.id):
        vid = f"{m.usb.vendor_id:04x}"
        lines.append(f"# {m.id}: {m.name}")
        for mode, pid in (("runtime", m.usb.runtime_product_id), ("DFU bootloader", m.usb.bootloader_product_id)):
            pid_s = f"{pid:04x}"   # udev compares sysfs's lower-case hex; a comment only on its own line (udev(7))
            lines.append(f"# {mode} ({vid}:{pid_s})")
            lines.append(f'SUBSYSTEM=="usb", ENV{{DEVTYPE}}=="usb_device", ATTR{{idVendor}}=="{vid}", '
                         f'ATTR{{idProduct}}=="{pid_s}", TAG+="uaccess"')
            if m.reader == "hid" and mode == "runtime":
                lines.append(f'SUBSYSTEM=="hidraw", ATTRS{{idVendor}}=="{vid}", ATTRS{{idProduct}}=="{pid_s}", '
                             f'TAG+="uaccess"')
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":   # regenerate the shipped file: python -m firmware_profiles.usbtoken.udev
    from firmware_profiles.usbtoken.model import load_token_models
    SHIPPED.parent.mkdir(parents=True, exist_ok=True)
    SHIPPED.write_text(udev_rules(load_token_models().values()))
    print(SHIPPED)
