"""Issue 11 item 4: formats both sides must agree on have one home, cns_spec; no copy left on either side."""


def test_both_sides_take_reasons_and_the_device_life_from_cns_spec():
    import datetime as dt

    from agent.ops import holder, revoke_orphans
    from cns_spec import reasons, validity
    from personalizer.edge import tls_clients
    assert set(tls_clients.REASONS) == set(reasons.REVOCATION_REASONS)
    assert revoke_orphans.REASON == reasons.CESSATION_OF_OPERATION
    assert holder.MAX_VALIDITY_YEARS == validity.DEVICE_LIFE_YEARS == holder.HolderRecord.__dataclass_fields__[
        "validity_years"].default
    h = holder.HolderRecord(codice_fiscale="RSSMRA80A01H501U", given_name="Mario", surname="Rossi",
                      birth_date="1980-01-01", sex="M")
    assert h.personal_data(dt.date(2024, 2, 29)).expiry_date == "28022030"   # the spec's 29 February rule
