"""``python -m rerank_gateway``: the same as the ``rerank-gateway`` console script."""

import sys

from .cli import main

sys.exit(main())
