"""The core every stage shares: event schema, data formats, features, the models, metrics, config types,
the pool handle and the federated algorithms. It imports no stage."""
