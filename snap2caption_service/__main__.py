import sys

from snap2caption_service.cli import main

sys.exit(main())
