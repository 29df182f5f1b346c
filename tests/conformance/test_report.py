"""The HTML report is self-contained and escapes what the card said; it is written whole or not at all."""
from __future__ import annotations

from html.parser import HTMLParser

import pytest

from agent.conformance import checks, report
from firmware_profiles.emulator.admin import SoftwareAuthenticator
from tests.conformance.emulated import card


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs

    def handle_data(self, data):
        self.text.append(data)


def _report(detail: str, serial: str) -> dict:
    c, model, t = card("eeprom_bytes=32768")
    d = checks.run(t, model, reader="R", pin="12345678", puk="87654321",
                   admin_key=SoftwareAuthenticator(model)).as_dict()
    d["card_serial"] = serial
    d["checks"][0]["detail"] = detail
    return d


def test_card_data_cannot_inject_markup():
    evil = '<script>alert(1)</script><img src=x onerror=alert(2)>"\''
    d = _report(evil, "<b>SERIAL</b>")
    text = report.to_html(d)
    p = Page()
    p.feed(text)
    assert "script" not in p.tags and "img" not in p.tags and "b" not in p.tags
    assert not any(k.startswith("on") for k, _ in p.attrs)
    assert evil in "".join(p.text) and "<b>SERIAL</b>" in "".join(p.text)   # shown, as text
    assert "http" not in text.replace("http-equiv", "")                    # no external resource
    assert "DOES NOT CONFORM" in text and 'class="fail" data-check="eeprom"' in text


def test_write_is_atomic(tmp_path, monkeypatch):
    d = _report("fine", "ICMR000000000001")
    target = tmp_path / "r.html"
    target.write_text("old report")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(report.os, "fsync", boom)
    with pytest.raises(OSError):
        report.write_html(target, d)
    assert target.read_text() == "old report" and [p.name for p in tmp_path.iterdir()] == ["r.html"]
    monkeypatch.undo()
    report.write_html(target, d)
    assert "ICMR000000000001" in target.read_text()
