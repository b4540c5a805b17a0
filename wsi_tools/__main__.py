import sys

from wsi_tools.cli import main

sys.exit(main())
