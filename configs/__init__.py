"""The shipped configs (YAML), installed as the package data ``stgraph.configs``: ``stgraph configs`` lists
them and ``--config NAME`` finds them from any folder (:mod:`stgraph.config.shipped`)."""
