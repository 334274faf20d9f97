import sys

from continual_ldu.cli import main

sys.exit(main())
