import sys

from butler.cli import main

sys.exit(main())
