"""Discovery over a Kademlia DHT (the ``kademlia`` package): signed node and provider
records, persistent storage. Nothing lives here yet; the mesh issue builds it."""
