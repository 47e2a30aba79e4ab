"""Run an optimizer study and write its report: ``python scripts/compare.py STUDY.yaml [options]``.

Same as ``hf-foco compare``; see ``hf_foco/compare/study.py`` for the study format.
"""

import sys

from hf_foco.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
