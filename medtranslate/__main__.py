import sys

from medtranslate.cli import main

sys.exit(main())
