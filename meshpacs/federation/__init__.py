"""The federation: who may join the mesh, and how nodes prove who they are.

A federation is a closed group of hospitals with one administrator, who keeps the
federation CA (``ca.py``). Each site's node holds a certificate from that CA for its
identity key (``meshpacs.keys.identity``: derived from the site secret, so a site rebuilt
from its recovery phrase keeps its identity). Every node-to-node channel is mutual TLS
against the CA (``tls.py``), and a peer is whoever its CA-signed certificate says it is
(``membership.Federation.verify``), unless the administrator's revocation list names it.

::

    administrator                              site
    ─────────────                              ────
    create  → DIR/ca.key, ca.pem, crl.pem
                                               request → CSR signed by the identity key
    sign    → issued/<serial>.pem  ◄────────── (the CSR)
            ──────────────────────────────────► install → federation/ca.pem, node.pem, crl.pem
    revoke  → crl.pem (next number) ──────────► install --crl

``enroll`` does request, sign and install in one step when both are on one machine.
Modules: ``names`` (site IDs), ``certs`` (pure certificate building and checking),
``membership`` (``Federation``), ``ca`` (the CA directory), ``sitefiles`` (a site's
files), ``tls`` (SSL contexts and ``peer_member``).
"""

from __future__ import annotations

from meshpacs.federation.ca import (
    FederationCA,
    IssuedCertificate,
    create_federation_ca,
    parse_serial,
)
from meshpacs.federation.certs import Member, make_csr, parse_csr
from meshpacs.federation.membership import Federation
from meshpacs.federation.names import (
    SITE_ID_MAX_LENGTH,
    site_id_problem,
    validate_federation_name,
    validate_site_id,
)
from meshpacs.federation.sitefiles import SiteFederationFiles, enroll_site, install_federation_files
from meshpacs.federation.tls import MutualTls, client_context, peer_member, server_context

__all__ = [
    "SITE_ID_MAX_LENGTH",
    "Federation",
    "FederationCA",
    "IssuedCertificate",
    "Member",
    "MutualTls",
    "SiteFederationFiles",
    "client_context",
    "create_federation_ca",
    "enroll_site",
    "install_federation_files",
    "make_csr",
    "parse_csr",
    "parse_serial",
    "peer_member",
    "server_context",
    "site_id_problem",
    "validate_federation_name",
    "validate_site_id",
]
