"""N2N learning (Ashok et al., ICLR 2018): layer removal and shrinkage chosen by REINFORCE policies."""
