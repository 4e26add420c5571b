"""``python -m tuf_signer.cli``."""

import sys

from tuf_signer.cli import main

sys.exit(main())
