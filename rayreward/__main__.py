import sys

from rayreward.commands.cli import main

sys.exit(main())
