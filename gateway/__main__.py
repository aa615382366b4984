"""`python -m gateway`: see gateway.process."""

from gateway.process import main

main()
