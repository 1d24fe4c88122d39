"""The gateway: pool side (store, registry, model catalog and artifacts, Pool
servicer), the Open Inference Protocol front door, verification and the ledger,
all served on one gRPC port. Start with :mod:`hyperinfer.gateway.app`."""
