"""Issued certificates pass pkilint (ETSI QCP-n-qscd, PKIX) and openssl chain verification."""
from __future__ import annotations

import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proto.cns.v1 import personalizer_pb2 as pb
from tests.personalizer import helpers

TIMEOUT = 20
# pkilint's exit code counts findings at or above -s; INFO findings (e.g. "SKI method 1 identified") are fine.
SEVERITY = "WARNING"


def _issue(stub, profile, tmp_path):
    resp = stub.SubmitIssue(helpers.issue_request(profile=profile), timeout=TIMEOUT)
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(x509.load_der_x509_certificate(resp.certificate_der).public_bytes(serialization.Encoding.PEM))
    issuing, root = (x509.load_der_x509_certificate(d).public_bytes(serialization.Encoding.PEM) for d in resp.chain_der)
    (tmp_path / "issuing.pem").write_bytes(issuing)
    (tmp_path / "root.pem").write_bytes(root)
    return leaf


def _run(*args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120)


def test_qualified_certificate_passes_etsi_lint(station_stub, tmp_path):
    leaf = _issue(station_stub, pb.CA_PROFILE_QUALIFIED_SIGNATURE, tmp_path)
    out = _run(helpers.VENV_BIN / "lint_etsi_cert", "lint", "-s", SEVERITY, "-t", "QCP-N-QSCD-EIDAS-FINAL-CERTIFICATE", leaf)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("profile", [pb.CA_PROFILE_CNS_AUTH, pb.CA_PROFILE_QUALIFIED_SIGNATURE])
def test_certificates_pass_pkix_lint(station_stub, tmp_path, profile):
    leaf = _issue(station_stub, profile, tmp_path)
    out = _run(helpers.VENV_BIN / "lint_pkix_cert", "lint", "-s", SEVERITY, leaf)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("profile", [pb.CA_PROFILE_CNS_AUTH, pb.CA_PROFILE_QUALIFIED_SIGNATURE])
def test_chain_verifies_with_openssl(station_stub, tmp_path, profile):
    leaf = _issue(station_stub, profile, tmp_path)
    out = _run("openssl", "verify", "-x509_strict", "-CAfile", tmp_path / "root.pem",
               "-untrusted", tmp_path / "issuing.pem", leaf)
    assert out.returncode == 0 and ": OK" in out.stdout, out.stdout + out.stderr


def test_cns_auth_profile_extensions(station_stub):
    cert = x509.load_der_x509_certificate(
        station_stub.SubmitIssue(helpers.issue_request(), timeout=TIMEOUT).certificate_der)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.content_commitment
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.ExtendedKeyUsageOID.CLIENT_AUTH]
    policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    assert [p.policy_identifier.dotted_string for p in policies] == ["1.3.76.16.2.1"]
