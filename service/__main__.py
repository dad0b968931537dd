"""``python -m service`` runs the gatebeat CLI."""

import sys

from service.cli import main

sys.exit(main())
