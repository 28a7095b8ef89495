"""iobs: the Iterative Optimal Brain Surgeon family of sparse solvers and pruners.

Conventions used across the package
-----------------------------------
* ``mask`` is a boolean tensor, ``True`` = weight kept (the paper's support Q / selector E_Q).
* ``k`` is the number of kept entries; ``sparsity`` the fraction pruned, so pruned = floor(s * n).
* ``H`` is a Hessian, ``Hinv`` its (damped) inverse, ``W`` a weight matrix with rows = outputs.
"""

__version__ = "0.1.0"
