#!/usr/bin/env python
"""Pretrain GPT-2 with any hf_foco or transformers optimizer from a recipe.

    accelerate launch scripts/run_pretrain.py recipes/gpt2-nano/foco.yaml [--key value ...]

Same as ``hf-foco train RECIPE.yaml [--key value ...]``; see :mod:`hf_foco.pretrain`.
"""

import sys

from hf_foco.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
