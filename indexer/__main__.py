import sys

from lorif_serve.indexer.cli import main

sys.exit(main())
