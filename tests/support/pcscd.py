"""Tests use the emulator package's private-pcscd launcher (firmware_profiles/emulator/pcscd.py)."""
from firmware_profiles.emulator.pcscd import Pcscd, free_port_pair, missing_tools, start_pcscd  # noqa: F401
