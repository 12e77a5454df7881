"""Serving: the tensor contract, the runtime the python models run, the tritonserver launcher and clients."""
