import sys

from qliksim.cli import main

sys.exit(main())
