"""Codice fiscale for the personalizer: a re-export of ``cns_spec.codice_fiscale`` (the one set of rules).

Kept so the personalizer's callers keep one import path; no logic here.
"""
from cns_spec.codice_fiscale import (CodiceFiscale, CodiceFiscaleError, check_character, check_consistency,
                                     is_valid, make, parse)

__all__ = ["CodiceFiscale", "CodiceFiscaleError", "check_character", "check_consistency", "is_valid", "make",
           "parse"]
