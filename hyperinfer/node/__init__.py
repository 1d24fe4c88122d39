"""The worker node (design §7): serves compiled models to the gateway and signs every result.

- ``devices``     what this machine can run: devices and target ids, best first
- ``cache``       content-addressed artifact cache; a download is visible only once its sha256 matches
- ``dataplane``   loaded models, input checks, signed attestations, concurrency limit (plain Python)
- ``models``      gateway offers -> publisher trust check -> target choice -> download -> load
- ``converters``  protobuf <-> plain values
- ``servicer``    ``hyperinfer.v1.Worker`` (Infer, Info) over the data plane
- ``server``      the gRPC server (error interceptor, message-size limit, health)
- ``pool_client`` join / heartbeat / leave / FetchArtifact against the gateway's Pool service
- ``app``         wires it together and shuts down gracefully
"""
