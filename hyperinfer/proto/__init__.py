"""Protobuf modules generated from proto/ by scripts/gen_proto.sh (the *_pb2* files; do not edit them).

``OIP_POOL``: the descriptor pool of the Open Inference Protocol messages
(``inference.*``). They live in a pool of their own, not protobuf's default
one, because every OIP client library (tritonclient, KServe's) registers the
same message names in the default pool; with a private pool an application
can import hyperinfer and such a client in one process. The wire format does
not depend on the pool.
"""

from google.protobuf import descriptor_pool as _descriptor_pool

OIP_POOL = _descriptor_pool.DescriptorPool()
