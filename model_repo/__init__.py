"""The checked-in part of each served model's core, shipped as package data (`llmrec.model_repo`):

    <model>_core/model.py       the Triton python model (a thin adapter over llmrec.server.runtime)
    <model>_core/cpu.pbtxt      the settings of the `cpu` target: batching, instances, parameters
    <model>_core/gpu.pbtxt      the same for the `gpu` target

Not a model repository itself: `llmrec export` builds one from these, the contract (which generates each
config's name, tensors and warm-up: llmrec.server.ensembles) and the trained runs.
"""
