"""Hand-written wire protocols of the gateway's hot path: the HTTP/1.1 server clients talk to
(http_server), the HTTP/1.1 client to the engines (http_client) and the Redis RESP client of the
rate limiter (resp). They know nothing of keys, models or routing; gateway/ builds on them."""
