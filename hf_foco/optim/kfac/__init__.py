"""K-FAC and FOP: curvature (:mod:`.curvature`), FOP's projection (:mod:`.fop`) and the optimizers
(:mod:`.optimizer`)."""

from .curvature import (
           DEFAULT_EXCLUDE,
           KFACLayer,
           damped_inverses,
           find_layers,
           fp32_matmul,
           sample_fisher_factors,
)
from .fop import fisher_orthogonal_component, fop_update
from .optimizer import FOP, KFAC

__all__ = ["DEFAULT_EXCLUDE", "FOP", "KFAC", "KFACLayer", "damped_inverses", "find_layers",
           "fisher_orthogonal_component", "fop_update", "fp32_matmul", "sample_fisher_factors"]
