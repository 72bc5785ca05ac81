"""recfl: device-cloud collaborative recommender training (CoDA-style augmentation, FedSubAvg)."""

__version__ = "0.1.0"
