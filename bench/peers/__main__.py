"""``python -m bench.peers``: the peers benchmark (``bench/peers_bench.py``)."""

from bench.peers_bench import main

main()
