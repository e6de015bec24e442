"""``python -m stgraph.cli`` (what ``torchrun -m stgraph.cli train ...`` starts in every process)."""
import sys

from stgraph.cli.main import console_main

sys.exit(console_main())
