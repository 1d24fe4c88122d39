"""gRPC plumbing shared by the gateway and the node: error mapping, tensor
conversion for the pool wire, server construction. No model logic here."""
