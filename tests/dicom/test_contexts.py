"""Copying the AE's supported contexts for each association: separate, equal, and quick."""

from __future__ import annotations

import copy
import time

from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.presentation import PresentationContext

from meshpacs.dicom.contexts import CheapCopyContexts

_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5"]


def _supported() -> list[PresentationContext]:
    ae = AE()
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, _SYNTAXES, scp_role=True, scu_role=False)
    return list(ae.supported_contexts)


def _fields(context: PresentationContext) -> tuple[object, ...]:
    return (
        context.context_id,
        context.abstract_syntax,
        tuple(context.transfer_syntax),
        context.scu_role,
        context.scp_role,
        context.as_scu,
        context.as_scp,
        context.result,
    )


def test_each_copy_is_equal_and_its_own() -> None:
    original = _supported()
    contexts = CheapCopyContexts(original)
    copied = copy.deepcopy(contexts)
    assert [_fields(c) for c in copied] == [_fields(c) for c in original]
    assert all(a is not b for a, b in zip(copied, original, strict=True))
    copied[0].context_id = 7  # negotiation writes these on its own copy
    copied[0].add_transfer_syntax("1.2.840.10008.1.2.2")
    copied[0].result = 0
    assert original[0].context_id is None and original[0].result is None
    assert list(original[0].transfer_syntax) == _SYNTAXES


def test_copying_is_many_times_quicker_than_a_generic_deepcopy() -> None:
    plain = _supported()
    cheap = CheapCopyContexts(plain)
    rounds = 5
    started = time.perf_counter()
    for _ in range(rounds):
        copy.deepcopy(plain)
    generic = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(rounds):
        copy.deepcopy(cheap)
    ours = time.perf_counter() - started
    # A ratio measured side by side, with a wide margin (measured here: about 14x).
    assert ours * 5 < generic, (ours, generic)
