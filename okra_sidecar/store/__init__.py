"""Redis persistence: the Store protocol, the Redis store and an own redis-server."""
