"""The deployment's keys and certificates, made with `cryptography` for one run on one machine.

- A run-local certificate authority (ECDSA P-384, valid for 30 days) and the SuperLink's TLS certificate
  it signs, for 127.0.0.1 and localhost: SuperNodes and the `flwr` CLI trust only this CA.
- One SuperNode authentication key pair per lender (ECDSA P-384, the curve Flower's SuperNode
  authentication uses), both in OpenSSH form, which is what `flower-supernode` and
  `flwr supernode register` read. Only registered public keys may join the federation.
Private keys are written 0600 by keys.write_private, as the signing keys are.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from federation.audit_trail.keys import write_private

VALIDITY = dt.timedelta(days=30)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _certificate(subject: str, public_key, issuer: x509.Name, signer, extensions) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer).public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALIDITY))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA384())


def make_tls(folder: Path) -> dict[str, Path]:
    """CA and SuperLink certificate in `folder`: ca.crt (public), server.crt, server.key (0600)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedcredit run-local CA")])
    ca = _certificate("fedcredit run-local CA", ca_key.public_key(), ca_name, ca_key,
                      [(x509.BasicConstraints(ca=True, path_length=0), True),
                       (x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                      key_encipherment=False, data_encipherment=False, key_agreement=False,
                                      encipher_only=False, decipher_only=False), True)])
    server_key = ec.generate_private_key(ec.SECP384R1())
    server = _certificate("127.0.0.1", server_key.public_key(), ca.subject, ca_key,
                          [(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                         x509.DNSName("localhost")]), False),
                           (x509.BasicConstraints(ca=False, path_length=None), True),
                           (x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), False)])
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.crt", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    write_private(paths["key"], _pem(server_key))
    return paths


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode authentication key pair: (private, public), both in OpenSSH form."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    # Flower's SuperNode reads its authentication key in OpenSSH form (load_ssh_private_key).
    write_private(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                             serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
    return private, public
