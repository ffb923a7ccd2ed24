"""Differentially private federated gradient-boosted decision trees (numpy only).

The pieces, one idea each: `binning` (public, data-independent bins over the encoded range [-1, 1]),
`structure` (tree shapes the coordinator chooses from public information), `trees` (the model: structures plus
leaf values, as plain data), `leaf_sums` (each lender's bounded gradient and hessian sums per leaf, their
sensitivity and Gaussian noise), `newton` (leaf values from the noisy sums), `accounting` (the privacy event of a
round and noise calibration), and `boosting` (the parameters and an in-process reference of the whole federated
boosting). Nothing here imports torch, the lenders or the coordinator.
"""
