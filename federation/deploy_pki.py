"""The deployment's keys and certificates, made with `cryptography`.

- A run-local certificate authority (ECDSA P-384, valid for 30 days) and the TLS certificates it signs: for the
  coordinator's public address, with every name and address the operator gives (several allowed), and for the
  SuperLink's own 127.0.0.1 endpoint. SuperNodes and the `flwr` CLI trust only this CA (or the CA the operator
  brings, with its own certificate, checked here before anything starts).
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
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from federation.audit_trail.keys import write_private

VALIDITY = dt.timedelta(days=30)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(subject: str, public_key, issuer: x509.Name, signer, extensions) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(signer, hashes.SHA384())


def _names(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _ca(folder: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedcredit run-local CA")])
    ca = _certificate(
        "fedcredit run-local CA",
        ca_key.public_key(),
        ca_name,
        ca_key,
        [
            (x509.BasicConstraints(ca=True, path_length=0), True),
            (
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                True,
            ),
        ],
    )
    return ca_key, ca


def _server(ca_key, ca: x509.Certificate, names: list[str]) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = _certificate(
        names[0],
        key.public_key(),
        ca.subject,
        ca_key,
        [
            (_names(names), False),
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    return key, cert


def make_tls(folder: Path, names: list[str] | None = None) -> dict[str, Path]:
    """A run-local CA and a server certificate for `names` (IP addresses or DNS names; default 127.0.0.1 and
    localhost) in `folder`: ca.crt (public), server.crt, server.key (0600)."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    names = list(names or ["127.0.0.1", "localhost"])
    ca_key, ca = _ca(folder)
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.crt", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    server_key, server = _server(ca_key, ca, names)
    paths["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    write_private(paths["key"], _pem(server_key))
    return paths


def certificate_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in san]


def check_brought_tls(cert_path: Path, key_path: Path, ca_path: Path, names: list[str]) -> None:
    """Certificates the operator brings: the key is the certificate's, the CA signed it, and it carries every
    name and address the SuperNodes will dial. One DeploymentError line naming what is wrong."""
    from federation.errors import FedCreditError

    try:
        cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
        ca = x509.load_pem_x509_certificate(Path(ca_path).read_bytes())
        key = serialization.load_pem_private_key(Path(key_path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise FedCreditError(f"cannot read the TLS files ({exc.__class__.__name__}: {exc})") from None
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise FedCreditError(f"{key_path} is not the private key of {cert_path}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise FedCreditError(f"{cert_path} is not signed by the CA {ca_path}") from None
    missing = [n for n in names if n not in certificate_names(cert)]
    if missing:
        raise FedCreditError(f"{cert_path} does not carry {missing[0]} (it names {', '.join(certificate_names(cert))})")


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """A SuperNode authentication key pair: (private, public), both in OpenSSH form."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    # Flower's SuperNode reads its authentication key in OpenSSH form (load_ssh_private_key).
    write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )
    return private, public
