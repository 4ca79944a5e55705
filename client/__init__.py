"""The relay client: joins a channel, stores its blocks and relays them to other clients."""
