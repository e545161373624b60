import sys

from mamba_nb.cli import main

sys.exit(main())
