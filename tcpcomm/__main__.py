"""C{python -m tcpcomm}: the admin command line."""

import sys

from tcpcomm.cli import main

sys.exit(main())
