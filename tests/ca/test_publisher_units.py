"""PkiPublisher on its own: refresh bounds, the supervised refresh task, atomic files, names from URLs."""
from __future__ import annotations

import asyncio

import pytest
from cryptography import x509

from personalizer.pki import PkiPublisher
from tests.ca import support


def _number(path) -> int:
    return x509.load_der_x509_crl(path.read_bytes()).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_refresh_must_be_at_most_two_hours(tmp_path):
    ca = support.make_ca(None, template=support.ca_dir(tmp_path))
    with pytest.raises(ValueError, match="refresh_seconds"):
        PkiPublisher(ca, crl_dir=tmp_path, http_host="127.0.0.1", http_port=0, refresh_seconds=7201)
    with pytest.raises(ValueError):
        PkiPublisher(ca, crl_dir=tmp_path, http_host="127.0.0.1", http_port=0, refresh_seconds=0)


def test_refresh_task_republishes_and_stops(tmp_path):
    async def go():
        ca = support.make_ca(support.ca_dir(tmp_path))
        pub = PkiPublisher(ca, crl_dir=tmp_path / "crl", http_host="127.0.0.1", http_port=0, refresh_seconds=1)
        await pub.start()
        first = _number(pub.crl_path)
        names = {t.get_name() for t in asyncio.all_tasks()}
        await asyncio.sleep(1.6)
        second = _number(pub.crl_path)
        await pub.stop()
        await ca.close()
        return pub, first, second, names

    pub, first, second, names = asyncio.run(go())
    assert "pki-crl-refresh" in names
    assert second > first
    assert pub.crl_name == "cns-issuing-ca" and pub.ca_cert_name == "cns-issuing-ca"   # from CAUrls
    assert sorted(p.name for p in pub.crl_dir.iterdir()) == ["cns-issuing-ca.crl", "cns-issuing-ca.pem"]


def test_config_and_publisher_agree_on_the_longest_refresh(tmp_path):
    """nextUpdate = thisUpdate + refresh + margin must stay within SLA4.3's 2 hours at the longest refresh."""
    import datetime as dt

    from personalizer import config
    from personalizer.pki import crl, publisher
    assert config.MAX_CRL_REFRESH_SECONDS == publisher.MAX_REFRESH_SECONDS
    assert dt.timedelta(seconds=publisher.MAX_REFRESH_SECONDS) + crl.NEXT_UPDATE_MARGIN <= crl.MAX_REFRESH
    ca = support.make_ca(None, template=support.ca_dir(tmp_path))
    with pytest.raises(ValueError, match="nextUpdate"):
        crl.build_crl(ca.issuing_certificate, [], crl_number=1, this_update=dt.datetime.now(dt.timezone.utc),
                      refresh=crl.MAX_REFRESH)
