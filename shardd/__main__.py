"""``python -m shardd``: run one shard process (see shardd.server)."""

import sys

from shardd.server import main

sys.exit(main())
