"""Federated learning in TensorFlow Federated: FedSubAvg and FedAvg as one process.

``computations`` holds the TFF computations (client work, sparse aggregation,
heat counts), ``process`` the iterative process (initialize/next) with the
per-row coefficient that distinguishes FedSubAvg from FedAvg, ``runtime`` the
TFF C++ workers it runs on, ``sampling`` client sampling and availability,
``simulate`` the ``recfl simulate`` driver.
"""
