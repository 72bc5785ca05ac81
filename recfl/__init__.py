"""recfl: device-cloud collaborative recommender training (CoDA-style augmentation, FedSubAvg).

Importing it keeps TensorFlow and the other libraries it drives quiet (:mod:`recfl.core.quiet`). The Python
API is :mod:`recfl.app.api` (``from recfl.app import api``): it sits in the app layer, above the stages, which
this package's ``__init__`` (run first by every stage) must not import.
"""

from recfl.core.quiet import quiet_libraries

__version__ = "0.1.0"

quiet_libraries()
