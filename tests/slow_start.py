"""A trainable whose module takes 4 s to import in each trial's process, as a trial that imports
torch and starts CUDA on a GPU node takes ~10 s to start: Tune must start such trials together.
"""

from __future__ import annotations

import time

time.sleep(4.0)


def bowl(config: dict) -> None:
    """``tests.synthetic.bowl``."""
    from tests.synthetic import bowl as run

    run(config)
