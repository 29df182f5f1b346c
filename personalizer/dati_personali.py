"""EF_DatiPersonali for the personalizer: a re-export of ``cns_spec.dati_personali`` (the one codec).

Kept so the personalizer's callers keep one import path; no logic here.
"""
from cns_spec.dati_personali import (DatiPersonaliError, PersonalData, PersonalData as DatiPersonali, cn_hash,
                                     decode, encode)

__all__ = ["DatiPersonali", "DatiPersonaliError", "PersonalData", "cn_hash", "decode", "encode"]
