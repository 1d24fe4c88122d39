from hyperinfer.cli import entrypoint

entrypoint()
