import sys

from lorif_serve.client.cli import main

sys.exit(main())
