"""Rebuilding an archive from the federation: gather, decode, verify, deliver. Nothing
lives here yet; the recovery issue builds it."""
