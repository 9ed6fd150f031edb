"""N2N learning (Ashok et al., ICLR 2018): layer removal and shrinkage chosen by REINFORCE policies.

``layers`` describes a model as policy states and builds students, ``policy`` holds the two LSTM policies,
``reward`` the paper's reward and constraint penalty, ``search`` the two-stage search and the final fine-tune.
"""
