"""Every CA index says whether the request store records the CA's certificate rows (issue 16 item 2).

``recorded_by_store`` is part of the index protocol (``ca.index.CAIndex``): the SQLite ``ca.db`` index
says False (the CA records each certificate itself), the PostgreSQL index says it per composition. An
index that does not say it is refused when the embedded CA opens it, with a message naming the
attribute, instead of being taken silently for one the CA must write.
"""
from __future__ import annotations

import asyncio

import pytest

from personalizer.ca.index import MEMORY, CAIndex, CertificateIndex
from personalizer.ca.index_postgres import PgCertificateIndex
from personalizer.errors import CAError
from tests.ca import support


@pytest.mark.parametrize("cls", [CertificateIndex, PgCertificateIndex])
def test_every_index_class_declares_whether_the_store_records_its_rows(cls):
    assert isinstance(vars(cls).get("recorded_by_store"), bool), f"{cls.__name__} does not declare it"


def test_the_sqlite_index_records_its_own_rows_and_is_a_ca_index():
    async def go():
        index = await CertificateIndex.open(MEMORY)
        try:
            assert isinstance(index, CAIndex) and index.recorded_by_store is False
        finally:
            await index.close()
    asyncio.run(go())


def test_the_postgresql_index_says_it_per_composition():
    assert PgCertificateIndex.over(None).recorded_by_store is False
    shared = PgCertificateIndex.over(None, recorded_by_store=True)
    assert isinstance(shared, CAIndex) and shared.recorded_by_store is True


class _Undeclared:
    """An index with every method but no ``recorded_by_store``: a new index that forgot to say it."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        if name == "recorded_by_store":
            raise AttributeError(name)
        return getattr(self._inner, name)


def test_an_index_that_does_not_say_it_is_refused_when_the_ca_opens(tmp_path):
    async def go():
        inner = await CertificateIndex.open(MEMORY)

        async def opener():
            return _Undeclared(inner)
        ca = support.make_ca(support.ca_dir(tmp_path))
        ca._index_opener = opener
        try:
            with pytest.raises(CAError, match="recorded_by_store"):
                await ca.open()
            assert ca._index is None          # nothing was opened: the refused index is closed again
        finally:
            await ca.close()
    asyncio.run(go())


class _RecordedByStore:
    """The SQLite index presented as one whose rows the store writes (as PostgreSQL's in the daemon)."""

    recorded_by_store = True

    def __init__(self, inner):
        self._inner, self.calls = inner, []

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name in ("record", "by_request"):
            async def counted(*a, **kw):
                self.calls.append(name)
                return await attr(*a, **kw)
            return counted
        return attr


def test_an_index_the_store_records_is_neither_read_nor_written_by_issue(tmp_path):
    async def go():
        inner = await CertificateIndex.open(MEMORY)
        index = _RecordedByStore(inner)

        async def opener():
            return index
        ca = support.make_ca(support.ca_dir(tmp_path))
        ca._index_opener = opener
        try:
            issued = await asyncio.gather(*(ca.issue("cns-auth", support.csr(), support.SUBJECT, rid)
                                            for rid in ("a", "b")))
            assert index.calls == []                  # the store's complete_issue records them
            assert issued[0].ref != issued[1].ref and await inner.by_request("a") is None
        finally:
            await ca.close()
    asyncio.run(go())
