"""Entry point of every PyTorchJob pod: python -m components.train.multinode"""

import sys

from components.common.logs import setup_logging
from components.train.multinode.training import worker_main

if __name__ == "__main__":
    setup_logging()
    sys.exit(worker_main())
