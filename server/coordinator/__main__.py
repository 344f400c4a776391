import sys

from lorif_serve.server.coordinator.cli import main

sys.exit(main())
