import sys

from lorif_serve.server.cli import main

sys.exit(main())
