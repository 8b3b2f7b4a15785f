"""Tensor parallelism: one process per rank (engine/parallel/launch.py), the rank's communicator and
all-reduce implementations (comm.py), and the model whose row-parallel GEMMs are followed by all-reduce
ops of the plan (tp_model.py)."""
