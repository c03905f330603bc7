"""Recovery: a site that lost everything but its phrase rebuilds its archive, byte for byte.

* :mod:`~meshpacs.recovery.model`: planned studies, bundles, holders and instances.
* :mod:`~meshpacs.recovery.session`: rejoining the federation from the phrase.
* :mod:`~meshpacs.recovery.catalog`: sealed records from the trusted peers into a plan.
* :mod:`~meshpacs.recovery.plan`: which studies, in which order (newest first).
* :mod:`~meshpacs.recovery.gather`: any k good fragments of a bundle, in parallel.
* :mod:`~meshpacs.recovery.decode`: instances out, each SHA-256 checked.
* :mod:`~meshpacs.recovery.journal`: what the target acknowledged, so a re-run resumes.
* :mod:`~meshpacs.recovery.deliver`: C-STORE into the rebuilt PACS, or files and a manifest.
* :mod:`~meshpacs.recovery.report`: what came back and what could not, and why.
* :mod:`~meshpacs.recovery.progress`: the running figures (rate, ETA) for the operator.
* :mod:`~meshpacs.recovery.service` and :mod:`~meshpacs.recovery.command`: the run itself.
"""
