"""The backup pipeline: stable studies become bundles, bundles become shares on partners.

* :mod:`~meshpacs.backup.placement`: which partner sites a bundle's shares go to (pure).
* :mod:`~meshpacs.backup.upload`: putting shares on them, hedging the slow ones.
"""
