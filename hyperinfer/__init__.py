"""hyperinfer: a hardware-agnostic inference network.

Models are compiled once per hardware target with Apache TVM, served by worker
nodes over gRPC, and verified by a gateway through sampled redundant execution
with signed result hashes. See README.md and docs/design.md.
"""

__version__ = "0.1.0"
