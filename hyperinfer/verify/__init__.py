"""Pure verification logic: digests, attestations, agreement, sampling, disputes,
economics. Nothing here imports grpc or tvm or touches the network or disk."""
