import sys

from fleet_cli.app import main

sys.exit(main())
