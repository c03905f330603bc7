"""Which receive path took an association: the node's own receivers or pynetdicom."""

from __future__ import annotations

from pynetdicom import AE

from .conftest import AE_TITLE, Node


def served_by(node: Node, *abstract_syntaxes: str) -> tuple[int, int]:
    """Associate proposing ``abstract_syntaxes``; (the node's own, pynetdicom's) associations
    held while it is established."""
    ae = AE(ae_title="ROUTED")
    for abstract_syntax in abstract_syntaxes:
        ae.add_requested_context(abstract_syntax)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=AE_TITLE)
    assert assoc.is_established
    try:
        server = node.ae._server
        assert server is not None and server.hub is not None
        return len(server.hub.active), len(server.active_associations)
    finally:
        assoc.release()
