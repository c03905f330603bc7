"""Proof of storage: challenges an owner plans at upload and spends later (issue 6)."""
