"""TLS material for the broker: the fleet CA, the broker's server certificate, optional client certs.

X.509 here is transport security only; message authenticity comes from Ed25519 envelopes
(docs/protocol.md §1). Keys are ECDSA P-256: every TLS stack devices may run (OpenSSL, mbedTLS) accepts it.
Pure functions return PEM bytes; writing them is :mod:`broker_config.render`'s job.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker_config.errors import BrokerConfigError

# Lifetimes. The CA lives as long as the fleet is likely to (10 years); leaf certificates 825 days,
# the longest that Apple's TLS clients accept (and a common cap elsewhere); `fleet broker render`
# re-issues the server certificate when fewer than RENEW_BEFORE remain.
CA_DAYS = 3650
LEAF_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)
# Backdate notBefore a little so a device whose clock lags by minutes still accepts a new cert.
CLOCK_SKEW = dt.timedelta(minutes=5)
# RFC 1123 host names (labels of letters, digits, hyphens), optionally a leading "*." wildcard.
_HOST_RE = re.compile(
    r"(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)


@dataclass(frozen=True)
class CertAndKey:
    cert_pem: bytes
    key_pem: bytes  # PKCS#8, unencrypted: secret

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise BrokerConfigError("the fleet CA key is not an EC key")
        return key


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.timezone.utc)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def general_names(sans: Sequence[str]) -> list[x509.GeneralName]:
    """``127.0.0.1`` / ``::1`` become IP SANs, everything else a DNS name."""
    out: list[x509.GeneralName] = []
    for raw in sans:
        san = raw.strip()
        if _is_ip(san):
            out.append(x509.IPAddress(ipaddress.ip_address(san)))
        elif _HOST_RE.fullmatch(san):
            out.append(x509.DNSName(san.lower()))
        else:
            raise BrokerConfigError(
                f"bad subject alternative name {raw!r}", hint="use host names or IP addresses"
            )
    if not out:
        raise BrokerConfigError("the server certificate needs at least one host name or address")
    return out


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def generate_ca(fleet: str, *, now: dt.datetime | None = None) -> CertAndKey:
    """A self-signed CA for the fleet's broker TLS (path length 0: it signs leaves only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edgeseal fleet {fleet} CA")])
    start = _now(now) - CLOCK_SKEW
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertAndKey(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _issue(
    ca: CertAndKey,
    common_name: str,
    sans: list[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    now: dt.datetime | None,
) -> CertAndKey:
    ca_cert, ca_key = ca.cert, ca.private_key()
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now(now) - CLOCK_SKEW
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(start + dt.timedelta(days=LEAF_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return CertAndKey(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_server_cert(ca: CertAndKey, sans: Sequence[str], *, now: dt.datetime | None = None) -> CertAndKey:
    """The broker's certificate, valid for every name/address in ``sans`` (clients check them)."""
    names = general_names(sans)
    return _issue(ca, sans[0].strip(), names, ExtendedKeyUsageOID.SERVER_AUTH, now)


def issue_client_cert(ca: CertAndKey, username: str, *, now: dt.datetime | None = None) -> CertAndKey:
    """A client certificate for mutual TLS (``require_client_cert``); CN = the broker username."""
    return _issue(ca, username, [], ExtendedKeyUsageOID.CLIENT_AUTH, now)


def server_cert_current(
    cert_pem: bytes, ca_cert_pem: bytes, sans: Sequence[str], *, now: dt.datetime | None = None
) -> bool:
    """Is ``cert_pem`` signed by this CA, valid for exactly ``sans``, and not about to expire?"""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
        cert.verify_directly_issued_by(ca_cert)
        have = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    want = general_names(sans)
    return set(have) == set(want) and cert.not_valid_after_utc - _now(now) > RENEW_BEFORE
