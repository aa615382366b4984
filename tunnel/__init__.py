"""The tunnel endpoint (`inventiv tunnel`): machines behind NAT dial out to it and stay
connected; the gateway and the worker reach them through its loopback relay. See hub.py."""
