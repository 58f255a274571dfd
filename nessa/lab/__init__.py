"""The NESSA lab: what trains, adapts and measures alignments; the service never imports it.

Training (``train`` for ridge / CCA, ``train_network`` for the networks), adaptation to a
gallery (``adapt``), the evaluation harness behind ``nessa eval`` (``evaluation``), the
learning curve and the model-upgrade study, and the data loading they share (``data``).
Embedders are always passed in; argument parsing lives in ``app/cli``.
"""
