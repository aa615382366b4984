"""Operating Inventiv: the Prometheus that `inventiv dev` runs, and the operator CLI."""
