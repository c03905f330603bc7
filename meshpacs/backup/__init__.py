"""The backup pipeline: stable studies become bundles, bundles become shares on partners.

* :mod:`~meshpacs.backup.placement`: which partner sites a bundle's shares go to (pure).
* :mod:`~meshpacs.backup.upload`: putting shares on them, hedging the slow ones.
* :mod:`~meshpacs.backup.encode`: a planned bundle into its n fragment files.
* :mod:`~meshpacs.backup.service`: the passes over the catalog that tie it together.
* :mod:`~meshpacs.backup.replicate`: sealed catalog records to the trusted peers only.
* :mod:`~meshpacs.backup.escrow`: the site secret's shares, each sealed to its trusted peer.
"""
