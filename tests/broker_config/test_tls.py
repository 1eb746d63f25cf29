"""TLS material: the fleet CA, server certificates with SANs, renewal decisions, client certs."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from broker_config.errors import BrokerConfigError
from broker_config.tls import (
    LEAF_DAYS,
    RENEW_BEFORE,
    generate_ca,
    issue_client_cert,
    issue_server_cert,
    server_cert_current,
)

SANS = ["broker.example.org", "localhost", "127.0.0.1", "::1"]


def test_ca_is_a_constrained_ca() -> None:
    ca = generate_ca("demo")
    bc = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca
    assert bc.path_length == 0
    assert "demo" in ca.cert.subject.rfc4514_string()


def test_server_cert_has_the_sans_and_verifies() -> None:
    ca = generate_ca("demo")
    server = issue_server_cert(ca, SANS)
    server.cert.verify_directly_issued_by(ca.cert)
    san = server.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = server.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    life = server.cert.not_valid_after_utc - server.cert.not_valid_before_utc
    assert life <= dt.timedelta(days=LEAF_DAYS)


def test_renewal_decision() -> None:
    ca, other = generate_ca("demo"), generate_ca("other")
    server = issue_server_cert(ca, SANS)
    assert server_cert_current(server.cert_pem, ca.cert_pem, SANS)
    assert server_cert_current(server.cert_pem, ca.cert_pem, list(reversed(SANS)))
    assert not server_cert_current(server.cert_pem, ca.cert_pem, [*SANS, "new.example.org"])
    assert not server_cert_current(server.cert_pem, other.cert_pem, SANS)
    near_expiry = server.cert.not_valid_after_utc - RENEW_BEFORE + dt.timedelta(seconds=1)
    assert not server_cert_current(server.cert_pem, ca.cert_pem, SANS, now=near_expiry)
    assert not server_cert_current(b"garbage", ca.cert_pem, SANS)


@pytest.mark.parametrize("bad", [[], [""], ["a b"], ["user@host"], ["http://x"], ["-bad-.com"]])
def test_bad_sans_are_refused(bad: list[str]) -> None:
    with pytest.raises(BrokerConfigError):
        issue_server_cert(generate_ca("demo"), bad)


def test_client_cert() -> None:
    ca = generate_ca("demo")
    client = issue_client_cert(ca, "collector")
    client.cert.verify_directly_issued_by(ca.cert)
    eku = client.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
