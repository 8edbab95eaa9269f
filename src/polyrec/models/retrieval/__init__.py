"""Two-tower retrieval models (tag ``retrieval``): ADI and the baselines of its Table 2.

Every module of this package is imported here and registers its models.
"""

from ...registry import import_submodules

import_submodules(__name__, __path__)
