"""Secure aggregation: which intrinsics may take client values, and how secure sums run in simulation.

TFF expresses secure aggregation as intrinsics (``federated_secure_sum``,
``federated_secure_sum_bitwidth``, ``federated_secure_modular_sum``) whose
server-side result is the sum alone. TFF 0.87's C++ worker has no
implementation of them ("Cannot embed a federated value"), so for simulation
each computation is lowered with ``tff.backends.test.replace_secure_intrinsics_with_bodies``
(the lowering TFF's own test contexts use): a plain sum in the worker,
after checking every summand is within its declared range. What is
simulated is the protocol's result, not its cryptography; a deployment runs
the same computation on a runtime with a secure-aggregation protocol (e.g.
SecAgg, Bonawitz et al., CCS'17).
"""

from __future__ import annotations

from functools import lru_cache

# Intrinsics that may take values placed at CLIENTS: they keep them there, or release only their sum.
PLACEMENT_PRESERVING = ("federated_map", "federated_map_all_equal", "federated_zip_at_clients")
SECURE_SUMS = ("federated_secure_sum", "federated_secure_sum_bitwidth", "federated_secure_modular_sum")


def _takes_client_values(type_signature) -> bool:
    import tensorflow_federated as tff

    if isinstance(type_signature, tff.FederatedType):
        return type_signature.placement is tff.CLIENTS
    if isinstance(type_signature, tff.StructType):
        return any(_takes_client_values(t) for _, t in tff.structure.to_elements(type_signature))
    return False


def client_value_intrinsics(comp) -> list[str]:
    """The URIs of every intrinsic in ``comp`` that takes values placed at CLIENTS (in tree order)."""
    import tensorflow_federated as tff

    found = []

    def visit(node):
        if isinstance(node, tff.framework.Intrinsic) and _takes_client_values(node.type_signature.parameter):
            found.append(node.uri)
        return node, False

    tff.framework.transform_postorder(comp.to_building_block(), visit)
    return found


def leaks(comp) -> list[str]:
    """Intrinsics through which client values could reach the server other than as a secure sum."""
    return [uri for uri in client_value_intrinsics(comp) if uri not in PLACEMENT_PRESERVING + SECURE_SUMS]


@lru_cache(maxsize=32)
def for_simulation(comp):
    """``comp`` with its secure sums lowered to plain sums for TFF's C++ worker (range checks kept);
    refuses a computation that would release client values any other way."""
    import tensorflow_federated as tff

    unsafe = leaks(comp)
    if unsafe:
        raise ValueError(f"client values reach the server through {', '.join(sorted(set(unsafe)))}")
    return tff.backends.test.replace_secure_intrinsics_with_bodies(comp)
