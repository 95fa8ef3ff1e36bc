"""``python -m pvmconsole`` = the `pvm` console."""
import sys

from pvmconsole.main import main

sys.exit(main())
