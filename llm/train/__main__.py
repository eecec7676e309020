"""`python -m llm.train ...` (and `torchrun ... -m llm.train ...`): see llm/train/__init__.py."""

import sys

from llm.train.cli import main

sys.exit(main())
