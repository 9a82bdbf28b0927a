"""Secure aggregation by pairwise masking: SecAgg (Bonawitz et al. 2017) and the sparse
neighbour graph of SecAgg+ (Bell et al. 2020)."""
