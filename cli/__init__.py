"""The ``stgraph`` command-line app (installed as ``stgraph.cli``)."""
