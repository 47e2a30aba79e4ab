"""The synthetic narrowing valley (FOCUS paper, Fig. 2): ``python scripts/valley.py --help``.

Same as ``hf-foco valley``; see :mod:`hf_foco.valley` for the landscape and the toy optimizers.
"""

import sys

from hf_foco.cli import main

if __name__ == "__main__":
    sys.exit(main(["valley", *sys.argv[1:]]))
