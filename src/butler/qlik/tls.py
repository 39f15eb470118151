"""TLS for talking to Qlik Sense with the certificates exported from the QMC."""

from __future__ import annotations

import ssl

from butler.config.settings import CertificateSettings


class CertificateError(Exception):
    """The configured certificate files cannot be used; the message names the file and the key."""


def client_tls(certificates: CertificateSettings, verify_server: bool) -> ssl.SSLContext:
    """A client context presenting ``Butler.cert.clientCert``; the server is verified against
    ``clientCertCA`` only when ``verify_server`` (``rejectUnauthorized: true``), as upstream does."""
    if certificates.client_cert is None or certificates.client_key is None:
        raise CertificateError(
            "Butler.cert.clientCert and Butler.cert.clientCertKey are needed to talk to Qlik Sense"
        )
    for key, path in (("clientCert", certificates.client_cert), ("clientCertKey", certificates.client_key)):
        if not path.is_file():
            raise CertificateError(f"Butler.cert.{key}: file not found: {path}")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    try:
        context.load_cert_chain(str(certificates.client_cert), str(certificates.client_key))
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(
            f"Butler.cert: cannot load {certificates.client_cert} with key {certificates.client_key}: {exc}"
        ) from exc
    if not verify_server:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if certificates.root_ca is None or not certificates.root_ca.is_file():
        raise CertificateError(
            f"Butler.cert.clientCertCA: file not found: {certificates.root_ca} "
            "(needed when rejectUnauthorized is true)"
        )
    try:
        context.load_verify_locations(str(certificates.root_ca))
    except (OSError, ssl.SSLError) as exc:
        raise CertificateError(
            f"Butler.cert.clientCertCA: cannot load {certificates.root_ca}: {exc}"
        ) from exc
    return context
