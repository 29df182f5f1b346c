"""Card administration keys, central (issue 12): the master keys in a PKCS#11 token (``keys``) and the
``CardAdmin`` service that answers a card's issuer challenge relayed by a station (``service``)."""
