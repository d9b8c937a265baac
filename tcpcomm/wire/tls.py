"""
TLS settings from PEM files: a server context (optionally requiring client
certificates signed by a given CA) and a client connection creator that
verifies the server, both with a modern profile. Files are read once, when
options are parsed.
"""

from __future__ import annotations

import re
from typing import Any

from OpenSSL.crypto import FILETYPE_PEM, X509
from OpenSSL.SSL import Connection, Context
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    KeyPair,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger

from tcpcomm.tokens import NAME_RULE, isName
from tcpcomm.wire.address import addressText

# The namespace its lines had before the package had layers: operators filter on it.
log = Logger(namespace="tcpcomm.tls")

_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


#: C{--tls-min-version}'s values.
TLS_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}

# Twisted's default suites still take CBC with SHA-1 MACs on TLS 1.2 (such as
# ECDHE-ECDSA-AES128-SHA). Keep forward secrecy (ECDHE) with AEAD ciphers only;
# TLS 1.3's own suites are all AEAD and stay as they are.
_CIPHERS = AcceptableCiphers.fromOpenSSLCipherString("ECDHE+AESGCM:ECDHE+CHACHA20")


def profile(minVersion: str = "1.2") -> dict[str, Any]:
    """
    The L{CertificateOptions} arguments of the modern profile: TLS
    C{minVersion} or newer, AEAD ciphers only.
    """
    return {"raiseMinimumTo": TLS_VERSIONS[minVersion], "acceptableCiphers": _CIPHERS}


class TLSFileError(ValueError):
    """
    A PEM file named by an option is missing, unreadable or not what it should be.
    """


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSFileError(f"{option} {path!r}: {e.strerror}") from None


def certificates(option: str, path: str) -> list[Certificate]:
    """
    Every certificate in the PEM file at C{path}, in order.
    """
    blocks = _CERTIFICATE.findall(_read(option, path))
    if not blocks:
        raise TLSFileError(f"{option} {path!r} holds no PEM certificate")
    try:
        return [Certificate.loadPEM(block) for block in blocks]
    except Exception as e:
        raise TLSFileError(
            f"{option} {path!r} holds a certificate that does not load: {e}"
        ) from None


def privateCertificate(
    certOption: str, certPath: str, keyOption: str, keyPath: str | None
) -> tuple[PrivateCertificate, list[Certificate]]:
    """
    The certificate with its private key (from C{keyPath}, or from the
    certificate file itself), and any chain certificates that follow it.
    """
    leaf, *chain = certificates(certOption, certPath)
    keyPEM = _read(keyOption, keyPath) if keyPath else _read(certOption, certPath)
    try:
        key = KeyPair.load(keyPEM, format=FILETYPE_PEM)
    except Exception as e:
        where = (
            f"{keyOption} {keyPath!r}" if keyPath else f"{certOption} {certPath!r} (no {keyOption})"
        )
        raise TLSFileError(f"{where} holds no usable private key: {e}") from None
    try:
        return PrivateCertificate.fromCertificateAndKeyPair(leaf, key), chain
    except Exception as e:
        raise TLSFileError(f"{keyOption} does not match {certOption} {certPath!r}: {e}") from None


class NamedClientOptions(CertificateOptions):
    """
    Server TLS for C{--client-id tls}: besides being signed by
    C{--tls-client-ca}, a client's certificate must have a common name that
    is a valid client name, or the handshake fails.
    """

    _named = False

    def getContext(self) -> Context:
        context = super().getContext()
        if not self._named:
            self._named = True
            # Twisted's own check only passes OpenSSL's verdict on.
            context.set_verify(context.get_verify_mode(), _verifyNamed)
        return context


def _verifyNamed(
    connection: Connection, certificate: X509, errno: int, depth: int, ok: int
) -> bool:
    if not ok or depth > 0:
        return bool(ok)
    name = certificate.get_subject().commonName
    if name is not None and isName(name):
        return True
    peer = getattr(connection.get_app_data(), "getPeer", None)
    log.warn(
        "refusing {peer}: its certificate's common name {subject!r} is not a usable id "
        "(--client-id tls; a name is {rule})",
        event="tls-no-name",
        peer="?" if peer is None else addressText(peer()),
        subject=subjectName(certificate),
        rule=NAME_RULE,
    )
    return False


def serverOptions(
    certPath: str,
    keyPath: str | None,
    clientCAPath: str | None,
    minVersion: str = "1.2",
    namedClients: bool = False,
) -> CertificateOptions:
    """
    A server context from C{--tls-cert}/C{--tls-key} with the modern
    L{profile}; with C{--tls-client-ca}, the handshake fails for a client
    without a certificate signed by that CA, and with C{namedClients}
    (C{--client-id tls}) for one whose common name is no client name.
    """
    identity, chain = privateCertificate("--tls-cert", certPath, "--tls-key", keyPath)
    mutual: dict[str, Any] = {}
    if clientCAPath is not None:
        # A trust root makes Twisted require and verify the client's certificate.
        cas = certificates("--tls-client-ca", clientCAPath)
        mutual["trustRoot"] = trustRootFromCertificates(cas)
    kind = NamedClientOptions if namedClients and clientCAPath is not None else CertificateOptions
    return kind(
        privateKey=identity.privateKey.original,
        certificate=identity.original,
        extraCertChain=[c.original for c in chain],
        **mutual,
        **profile(minVersion),
    )


def clientCreator(
    hostname: str,
    caPath: str | None,
    certPath: str | None,
    keyPath: str | None,
    minVersion: str = "1.2",
) -> IOpenSSLClientConnectionCreator:
    """
    Client TLS with the modern L{profile} that verifies the server's
    certificate for C{hostname} against C{--tls-ca} (or the system's trust
    store), presenting C{--tls-cert} when given.
    """
    trustRoot = (
        trustRootFromCertificates(certificates("--tls-ca", caPath)) if caPath else platformTrust()
    )
    clientCertificate = None
    if certPath is not None:
        clientCertificate, _ = privateCertificate("--tls-cert", certPath, "--tls-key", keyPath)
    return optionsForClientTLS(
        hostname,
        trustRoot=trustRoot,
        clientCertificate=clientCertificate,
        extraCertificateOptions=profile(minVersion),
    )


def subjectName(certificate: X509 | None) -> str | None:
    """
    The common name of a peer's certificate (its whole subject if it has
    none), or L{None} when the peer presented no certificate.
    """
    if certificate is None:
        return None
    subject = certificate.get_subject()
    if subject.commonName:
        return str(subject.commonName)
    return ",".join(f"{k.decode()}={v.decode()}" for k, v in subject.get_components())
